"""Every place c360 relies on strawberry's, graphql-core's or Starlette's internals, in one
module.

Each name below is something the libraries do not document as public: a private
attribute, an internal class, the back-reference strawberry leaves on graphql-core's
fields. The rest of the code imports them from here only, and tests/test_upstream.py
checks each against the installed versions (attributes, types, the signatures of the
methods `PlainFieldExecutor` overrides), so an upgrade that changes one fails there,
loudly, before it can change an answer. pyproject.toml bounds both libraries above.
"""

from __future__ import annotations

from typing import Any

from graphql import GraphQLField, GraphQLSchema
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.schema.schema_converter import CustomGraphQLEnumType
from strawberry.types.field import StrawberryField

__all__ = [
    "CustomGraphQLEnumType",
    "ExecutionContextBase",
    "core_schema",
    "field_definition",
    "has_default_resolver",
    "keep_body",
    "raw_info",
]

# strawberry's execution context (graphql-core's with strawberry's hooks), which
# resolvers/execution.py extends through `execution_context_class`, overriding
# graphql-core's `execute_field` and `complete_value` and using its `handle_field_error`
# and `collected_errors`.
ExecutionContextBase = StrawberryGraphQLCoreExecutionContext

# The key under which strawberry puts its own field definition in a graphql-core field's
# `extensions`.
_BACKREF = "strawberry-definition"


def core_schema(schema: Any) -> GraphQLSchema:
    """graphql-core's schema behind a strawberry Schema."""
    found: GraphQLSchema = schema._schema
    return found


def raw_info(info: Any) -> Any:
    """graphql-core's ResolveInfo behind strawberry's Info (field nodes, fragments)."""
    return info._raw_info


def field_definition(field_def: GraphQLField) -> StrawberryField | None:
    """The strawberry field a graphql-core field was made from, if any."""
    definition = field_def.extensions.get(_BACKREF)
    return definition if isinstance(definition, StrawberryField) else None


def has_default_resolver(field_def: GraphQLField) -> bool:
    """Whether graphql-core resolves the field with strawberry's default resolver (an
    attribute read), which strawberry marks `_is_default`."""
    return bool(getattr(field_def.resolve, "_is_default", False))


def keep_body(request: Any, body: bytes) -> None:
    """Hand a body read from the ASGI messages (gateway/http/body.py counts it as it
    streams) to a Starlette `Request`: its `body()`, `json()` and `stream()` look at the
    private `_body` first, which is where the body they read themselves is kept."""
    request._body = body
