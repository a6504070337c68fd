"""Query limits, with the OWASP GraphQL cheat sheet as the floor: depth, estimated cost,
aliases, tokens and batch size. A query over any of them is a request error
(`extensions.code = "QUERY_TOO_COMPLEX"`, `extensions.limit` names the limit, no `data`)
raised before any resolver runs, so no department system is ever called for it.

Depth and aliases are validation rules (remembered with the document, `ParsedDocuments`);
tokens bound the parser itself; the cost depends on variables (`first: $n`), so it is
estimated per request, after validation and before execution.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

from graphql import (
    ArgumentNode,
    ASTValidationRule,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLSyntaxError,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationRule,
    VariableDefinitionNode,
    VariableNode,
    Visitor,
    get_named_type,
    get_nullable_type,
    get_operation_ast,
    is_list_type,
    parse,
    visit,
)
from graphql.execution.values import get_variable_values
from graphql.pyutils import Undefined
from strawberry.extensions import AddValidationRules, SchemaExtension
from strawberry.schema.schema import validate_document
from strawberry.types.execution import PreExecutionError

from gateway.errors import ConfigError
from resolvers.upstream import core_schema

CODE = "QUERY_TOO_COMPLEX"
Fragments = Mapping[str, FragmentDefinitionNode]


@dataclass(frozen=True, slots=True)
class QueryLimits:
    """`[limits]`. `max_body_bytes` stays with the HTTP view (`server.max_body_bytes`)."""

    max_depth: int = 12
    max_cost: int = 25_000  # a 100-customer page with a few nested lists is ~8,000
    max_aliases: int = 30
    max_tokens: int = 2000
    max_batch: int = 10  # operations in one array-batched request
    default_list_size: int = 10  # the size assumed for a list field without `first`

    @classmethod
    def parse(cls, table: Mapping[str, Any]) -> QueryLimits:
        known = {f.name for f in fields(cls)}
        values: dict[str, int] = {}
        for key, value in table.items():
            if key not in known:
                raise ConfigError(f"limits.{key}: unknown key")
            # A limit of 0 would refuse everything, and "off" is not an option for a floor.
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"limits.{key}: expected an integer >= 1")
            values[key] = value
        return cls(**values)


class QueryTooComplex(Exception):
    """A request over one of the limits; `error()` is what the client receives."""

    def __init__(self, limit: str, maximum: int, message: str) -> None:
        super().__init__(message)
        self.limit = limit
        self.maximum = maximum
        self.message = message

    def error(self) -> GraphQLError:
        return GraphQLError(
            self.message,
            extensions={"code": CODE, "limit": self.limit, "max": self.maximum},
        )


def check_batch(size: int, limits: QueryLimits) -> None:
    """For the view, before an array-batched request runs: raises QueryTooComplex."""
    if size > limits.max_batch:
        raise QueryTooComplex(
            "batch",
            limits.max_batch,
            f"The batch has {size} operations; the batch limit is {limits.max_batch}.",
        )


# --- measures of a document -------------------------------------------------------------
# Each walk memoises fragments: a fragment spread many times (or fragments spreading each
# other twice over, a "fragment bomb") costs one walk, not one per spread. Spreads of a
# fragment that is being walked are cycles (an invalid document, since these rules run
# alongside NoFragmentCyclesRule) and count nothing. Introspection fields count nothing in
# depth and cost, as in strawberry's QueryDepthLimiter: graphql-core's
# MaxIntrospectionDepthRule (a specified rule) bounds introspection instead, and an IDE's
# introspection query would otherwise exceed any useful depth.


def _fragments(document: DocumentNode) -> dict[str, FragmentDefinitionNode]:
    return {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}


def _is_introspection(node: FieldNode) -> bool:
    return node.name.value.startswith("__")


def _fold(
    selection_set: SelectionSetNode,
    fragments: Fragments,
    field_value: Callable[[FieldNode, Callable[[SelectionSetNode], int]], int],
    combine: Callable[[int, int], int],
    memo: dict[str, int],
    active: set[str],
) -> int:
    """One walk of a selection set for both measures: `field_value(field, below)` gives a
    field's contribution (`below` measures a child selection set), `combine` folds them.
    Each fragment is measured once (memo) and a fragment cycle is cut (active), so the
    walk stays linear even for a fragment bomb."""

    def below(child: SelectionSetNode) -> int:
        return _fold(child, fragments, field_value, combine, memo, active)

    result = 0
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            result = combine(result, field_value(selection, below))
        elif isinstance(selection, InlineFragmentNode):
            result = combine(result, below(selection.selection_set))
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            if fragment is None or name in active:
                continue
            if name not in memo:
                active.add(name)
                memo[name] = below(fragment.selection_set)
                active.discard(name)
            result = combine(result, memo[name])
    return result


def selection_depth(
    selection_set: SelectionSetNode, fragments: Fragments, memo: dict[str, int] | None = None
) -> int:
    """Level of the deepest field below a selection set, its own fields being level 0
    (graphql-depth-limit's measure: `{ a { b } }` has depth 1)."""

    def field_depth(field: FieldNode, below: Callable[[SelectionSetNode], int]) -> int:
        if field.selection_set is None or _is_introspection(field):
            return 0
        return 1 + below(field.selection_set)

    return _fold(selection_set, fragments, field_depth, max, {} if memo is None else memo, set())


def alias_count(
    selection_set: SelectionSetNode, fragments: Fragments, memo: dict[str, int] | None = None
) -> int:
    """Aliased fields as executed: a fragment's aliases count once per spread."""

    def field_aliases(field: FieldNode, below: Callable[[SelectionSetNode], int]) -> int:
        own = int(field.alias is not None)
        return own + (below(field.selection_set) if field.selection_set is not None else 0)

    memo = {} if memo is None else memo  # shared: each fragment measured once per document
    return _fold(selection_set, fragments, field_aliases, operator.add, memo, set())


class CostEstimate:
    """The cost of one operation: a leaf costs 1; a field with a selection costs
    1 + size x (the cost of its selection), where size is 1 for a single object, the
    `first` argument for a paginated field (a literal, a variable, or the argument's
    default in the schema: `customers` 20, `orders` 10, `tickets` 10), and
    `default_list_size` for any other list. A `first` above `page_size_cap` (the graph's
    `max_page_size`) counts as the cap: the resolvers refuse such a page with
    BAD_USER_INPUT, as the contract says, before any system is called.

    A Relay connection (`customers(first: 20) { edges { node {...} } }`) applies its
    `first` once: the lists directly inside a paginated field that is not a list itself
    (`edges`, `nodes`) count as size 1."""

    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: Fragments,
        variables: Mapping[str, Any] | None,
        variable_defaults: Mapping[str, Any],
        default_list_size: int,
        page_size_cap: int | None = None,
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.variables = variables if variables is not None else {}
        self.variable_defaults = variable_defaults
        self.default_list_size = default_list_size
        self.page_size_cap = page_size_cap
        self._memo: dict[tuple[str, bool], int] = {}
        self._active: set[str] = set()

    @classmethod
    def of_operation(
        cls,
        schema: GraphQLSchema,
        document: DocumentNode,
        operation_name: str | None,
        variables: Mapping[str, Any] | None,
        default_list_size: int,
        page_size_cap: int | None = None,
    ) -> int:
        operation = get_operation_ast(document, operation_name)
        if operation is None:
            return 0  # execution reports the missing operation
        root = schema.get_root_type(operation.operation)
        if root is None:
            return 0
        fragments = _fragments(document)
        defaults = {
            d.variable.name.value: _int_literal(d.default_value)
            for d in operation.variable_definitions or ()
        }
        estimate = cls(schema, fragments, variables, defaults, default_list_size, page_size_cap)
        return estimate.selection(operation.selection_set, root, in_connection=False)

    def selection(
        self, selection_set: SelectionSetNode, parent: GraphQLNamedType, *, in_connection: bool
    ) -> int:
        total = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                total += self.field(selection, parent, in_connection=in_connection)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                inner = self.schema.get_type(condition.name.value) if condition else parent
                if inner is not None:
                    total += self.selection(
                        selection.selection_set, inner, in_connection=in_connection
                    )
            elif isinstance(selection, FragmentSpreadNode):
                total += self.spread(selection.name.value, in_connection=in_connection)
        return total

    def spread(self, name: str, *, in_connection: bool) -> int:
        fragment = self.fragments.get(name)
        if fragment is None or name in self._active:
            return 0
        key = (name, in_connection)
        if key not in self._memo:
            inner = self.schema.get_type(fragment.type_condition.name.value)
            self._active.add(name)
            self._memo[key] = (
                self.selection(fragment.selection_set, inner, in_connection=in_connection)
                if inner is not None
                else 0
            )
            self._active.discard(name)
        return self._memo[key]

    def field(self, node: FieldNode, parent: GraphQLNamedType, *, in_connection: bool) -> int:
        if _is_introspection(node):
            return 0
        if not isinstance(parent, GraphQLObjectType | GraphQLInterfaceType):
            return 0
        definition = parent.fields.get(node.name.value)
        if definition is None or node.selection_set is None:
            return 1
        is_list = is_list_type(get_nullable_type(definition.type))
        paginated = "first" in definition.args
        if paginated:
            size = self.first(node, definition)
        elif is_list:
            size = 1 if in_connection else self.default_list_size
        else:
            size = 1
        child = get_named_type(definition.type)
        below = self.selection(node.selection_set, child, in_connection=paginated and not is_list)
        return 1 + size * below

    def first(self, node: FieldNode, definition: GraphQLField) -> int:
        value: Any = None
        for argument in node.arguments or ():
            if argument.name.value != "first":
                continue
            if isinstance(argument.value, VariableNode):
                name = argument.value.name.value
                value = self.variables.get(name, self.variable_defaults.get(name))
            else:
                value = _int_literal(argument.value)
        if value is None:
            default = definition.args["first"].default_value
            value = default if default is not Undefined else None
        if isinstance(value, bool) or not isinstance(value, int):
            # Absent, null, or not an integer (execution will reject the latter).
            return self.default_list_size
        size: int = value
        if self.page_size_cap is not None:
            # The resolvers refuse a larger page (BAD_USER_INPUT) before fetching anything.
            size = min(size, self.page_size_cap)
        return max(0, size)


SCALARS = (int, float, str, bool, type(None))


class CostCache:
    """Operations' costs, remembered per parsed document (the parser cache hands out the
    same document for the same text). The estimate reads only the variables bound to
    `first:` arguments, and the document alone decides which; their values are taken as
    execution will see them, coerced by their declared types (`100.0` for an `Int` is the
    Int 100, an absent one its default), and a cost is remembered by those coerced values:
    `first: $n` with `$n = 100.0` costs what `first: 100` does, and the cache cannot hand
    one form's cost to the other; a customer id changes nothing. Bounded: `documents`
    documents, `per_document` value combinations each."""

    def __init__(self, documents: int = 256, per_document: int = 64) -> None:
        self.documents = documents
        self.per_document = per_document
        # (id of the document, operation) -> (the document, kept so that its id stays
        # its own; the definitions of the variables read; cost by their coerced values)
        self._entries: dict[
            tuple[int, str | None],
            tuple[DocumentNode, tuple[VariableDefinitionNode, ...], dict[tuple[Any, ...], int]],
        ] = {}

    def cost(
        self,
        schema: GraphQLSchema,
        document: DocumentNode,
        operation_name: str | None,
        variables: Mapping[str, Any] | None,
        default_list_size: int,
        page_size_cap: int | None,
    ) -> int:
        key = (id(document), operation_name)
        entry = self._entries.get(key)
        if entry is None or entry[0] is not document:
            entry = (document, self._read_definitions(document, operation_name), {})
            if len(self._entries) >= self.documents:
                del self._entries[next(iter(self._entries))]  # the oldest
            self._entries[key] = entry
        _, definitions, costs = entry
        values = coerced_variables(schema, definitions, variables)
        used = tuple(values.get(d.variable.name.value) for d in definitions)
        if not all(isinstance(value, SCALARS) for value in used):
            return CostEstimate.of_operation(
                schema, document, operation_name, values, default_list_size, page_size_cap
            )
        found = costs.get(used)
        if found is None:
            found = CostEstimate.of_operation(
                schema, document, operation_name, values, default_list_size, page_size_cap
            )
            if len(costs) >= self.per_document:
                costs.clear()
            costs[used] = found
        return found

    @staticmethod
    def _read_definitions(
        document: DocumentNode, operation_name: str | None
    ) -> tuple[VariableDefinitionNode, ...]:
        """The definitions of the variables the estimate may read: those given to a
        `first:` argument anywhere in the document (its fragments included)."""
        operation = get_operation_ast(document, operation_name)
        if operation is None:
            return ()
        names: set[str] = set()

        class FirstArguments(Visitor):
            def enter_argument(self, node: ArgumentNode, *_: Any) -> None:
                if node.name.value == "first" and isinstance(node.value, VariableNode):
                    names.add(node.value.name.value)

        visit(document, FirstArguments())
        return tuple(
            definition
            for definition in operation.variable_definitions or ()
            if definition.variable.name.value in names
        )


def coerced_variables(
    schema: GraphQLSchema,
    definitions: tuple[VariableDefinitionNode, ...],
    variables: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """These variables' values as execution sees them (graphql-core's coercion by their
    declared types; a definition's default for an absent one). Empty when they do not
    coerce: execution then refuses the request before anything runs, and the estimate
    takes its defaults."""
    if not definitions or not isinstance(variables, Mapping):
        return {}
    coerced = get_variable_values(schema, definitions, dict(variables))
    if isinstance(coerced, list):
        return {}
    return dict(coerced.coerced)


def _int_literal(node: Any) -> int | None:
    return int(node.value) if isinstance(node, IntValueNode) else None


# --- strawberry seams --------------------------------------------------------------------


def depth_rule(limits: QueryLimits) -> type[ValidationRule]:
    class DepthLimit(ValidationRule):
        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            depth = selection_depth(node.selection_set, _fragments(self.context.document))
            if depth > limits.max_depth:
                self.report_error(
                    QueryTooComplex(
                        "depth",
                        limits.max_depth,
                        f"The query is nested {depth} levels deep; "
                        f"the depth limit is {limits.max_depth}.",
                    ).error()
                )

    return DepthLimit


def alias_rule(limits: QueryLimits) -> type[ValidationRule]:
    class AliasLimit(ValidationRule):
        def enter_document(self, node: DocumentNode, *_: Any) -> None:
            fragments = _fragments(node)
            memo: dict[str, int] = {}
            count = sum(
                alias_count(d.selection_set, fragments, memo)
                for d in node.definitions
                if isinstance(d, OperationDefinitionNode)
            )
            if count > limits.max_aliases:
                self.report_error(
                    QueryTooComplex(
                        "aliases",
                        limits.max_aliases,
                        f"The query uses {count} aliases; the alias limit is {limits.max_aliases}.",
                    ).error()
                )

    return AliasLimit


class ParsedDocuments:
    """Documents parsed and validated before, for every request: the parsed document by
    its text and parse options, and the validation errors by document and rules. The
    same text gets the same document object, so validation is keyed by the document's
    identity (strawberry's ValidationCache hashes the whole syntax tree per request),
    and so are the executor's plans and the cost cache. Bounded; the least recently used
    goes first."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._parsed: dict[tuple[str, tuple[Any, ...]], DocumentNode] = {}
        # (id of the document, rules) -> (the document, kept so its id stays its own; errors)
        self._validated: dict[
            tuple[int, tuple[Any, ...]], tuple[DocumentNode, list[GraphQLError]]
        ] = {}

    def parse(self, text: str, options: Mapping[str, Any]) -> DocumentNode:
        key = (text, tuple(options.items()))
        document = self._parsed.pop(key, None)
        if document is not None:
            self._parsed[key] = document  # the most recently used, last
        else:
            document = parse(text, **options)  # a syntax error is not remembered
            if len(self._parsed) >= self.size:
                del self._parsed[next(iter(self._parsed))]
            self._parsed[key] = document
        return document

    def validate(
        self, schema: GraphQLSchema, document: DocumentNode, rules: tuple[Any, ...]
    ) -> list[GraphQLError]:
        key = (id(document), rules)
        found = self._validated.pop(key, None)
        if found is not None:  # its document is alive in it: the id is still its own
            self._validated[key] = found
            return found[1]
        errors = validate_document(schema, document, rules)
        if len(self._validated) >= self.size:
            del self._validated[next(iter(self._validated))]
        self._validated[key] = (document, errors)
        return errors


class DocumentCache(SchemaExtension):
    """Parsing under the token limit, and validation, each done once per document
    (`ParsedDocuments`): strawberry's ParserCache, ValidationCache and MaxTokensLimiter
    in one extension, as each extension costs every request its hooks. A document over
    the token limit is QUERY_TOO_COMPLEX: the parser stops there."""

    def __init__(self, documents: ParsedDocuments, max_tokens: int) -> None:
        self.documents = documents
        self.max_tokens = max_tokens

    def on_operation(self) -> Iterator[None]:
        self.execution_context.parse_options["max_tokens"] = self.max_tokens
        try:
            yield
        except GraphQLSyntaxError as error:
            if error.message.startswith(
                f"Syntax Error: Document contains more than {self.max_tokens} tokens"
            ):
                raise QueryTooComplex(
                    "tokens",
                    self.max_tokens,
                    f"The query has more than {self.max_tokens} tokens; "
                    f"the token limit is {self.max_tokens}.",
                ).error() from None
            raise

    def on_parse(self) -> Iterator[None]:
        ctx = self.execution_context
        if ctx.graphql_document is None and ctx.query:
            ctx.graphql_document = self.documents.parse(ctx.query, ctx.parse_options)
        yield

    def on_validate(self) -> Iterator[None]:
        ctx = self.execution_context
        if ctx.graphql_document is not None:
            ctx.pre_execution_errors = self.documents.validate(
                core_schema(ctx.schema), ctx.graphql_document, ctx.validation_rules
            )
        yield


class ComplexityLimit(AddValidationRules):
    """Depth and aliases as validation rules; the cost once the variables are known,
    before execution: an over-cost operation's result is set here, so strawberry never
    executes it (its documented way for an extension to answer in place of execution)."""

    def __init__(
        self,
        limits: QueryLimits,
        rules: list[type[ASTValidationRule]],
        page_size_cap: int | None = None,
        costs: CostCache | None = None,
    ) -> None:
        super().__init__(rules)
        self.limits = limits
        self.page_size_cap = page_size_cap
        self.costs = costs if costs is not None else CostCache()

    def on_execute(self) -> Iterator[None]:
        ctx = self.execution_context
        if ctx.graphql_document is not None and ctx.result is None:
            cost = self.costs.cost(
                core_schema(ctx.schema),
                ctx.graphql_document,
                ctx.operation_name,
                ctx.variables,
                self.limits.default_list_size,
                self.page_size_cap,
            )
            if cost > self.limits.max_cost:
                ctx.result = PreExecutionError(
                    data=None,
                    errors=[
                        QueryTooComplex(
                            "cost",
                            self.limits.max_cost,
                            f"The query's estimated cost is {cost}; "
                            f"the cost limit is {self.limits.max_cost}.",
                        ).error()
                    ],
                )
        yield


def limit_extensions(
    limits: QueryLimits, *, page_size_cap: int | None = None
) -> list[Callable[[], SchemaExtension]]:
    """Extension factories for `build_schema(extensions=...)`, parsing and validation
    with them; `page_size_cap` is the graph's `max_page_size`. The rule classes are made
    once here: validation is remembered by them."""
    rules: list[type[ASTValidationRule]] = [depth_rule(limits), alias_rule(limits)]
    documents = ParsedDocuments()
    costs = CostCache()
    return [
        lambda: DocumentCache(documents, limits.max_tokens),
        lambda: ComplexityLimit(limits, rules, page_size_cap, costs),
    ]
