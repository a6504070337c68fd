"""Completing plain fields without graphql-core's per-field machinery.

graphql-core executes every field the same way: a `ResolveInfo`, the resolver, then a walk
through `complete_value` (non-null? list? leaf? object?) for the value and for every item
and sub-field beneath it. For most of a page of customers that is all overhead: a field
strawberry calls *basic* (no resolver, no field extension: an attribute read) whose
selection is made only of basic fields is its attribute coerced by its type.

`PlainFieldExecutor` (strawberry's `execution_context_class` seam) compiles such a
selection, once per request and selection, into one function from value to result, and
uses it where graphql-core would start the walk: for a basic field in `execute_field`, and
for a resolver's result in `complete_value`. A field with arguments marked `PREPARED`
(`tickets(first: 3)`) is read from its source's `prepared` values when the parent settled
it there for all the customers of a page (resolvers/loading.py), instead of calling its
resolver and field extensions once per customer. An error value in a nullable field of
an object (a refusal the parent settled) is completed as null and noted with its path
below where the completion started; when it returns, each is reported as graphql-core's
`handle_field_error` would have, in the order met. Anything else irregular (an error
value where the type is non-null, null there, a value its scalar refuses, a list that is
not a list) makes the function give up, and graphql-core completes that field the usual
way, reporting exactly what it always reports; except that a field whose value *is* an
error is reported at its path as graphql-core's own `execute_field` would, without
calling its resolver to get the same value again. tests/test_execution.py runs the same
operations through both and compares the responses.
"""

from __future__ import annotations

import keyword
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from graphql import (
    GraphQLBoolean,
    GraphQLError,
    GraphQLField,
    GraphQLFloat,
    GraphQLID,
    GraphQLInt,
    GraphQLLeafType,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLString,
    Undefined,
    is_leaf_type,
    is_list_type,
    is_non_null_type,
    is_object_type,
    located_error,
)
from graphql.pyutils import Path
from strawberry.types.field import StrawberryField

from resolvers.upstream import (
    CustomGraphQLEnumType,
    ExecutionContextBase,
    field_definition,
    has_default_resolver,
)

# A compiled completion: the response value for a resolved value, or it raises.
Complete = Callable[[Any], Any]


class Irregular(Exception):
    """The value needs graphql-core's own completion (which reports what is wrong)."""


PREPARED = "c360.prepared"
"""Metadata of a field whose value a parent may have prepared for its source: the
source's `prepared` dict holds it by response key. Where it does not, the resolver runs
(with its field extensions) as usual; where it does, the parent decided the policy."""
PREPARED_FIELD = {PREPARED: True}


def basic_field(field_def: GraphQLField) -> StrawberryField | None:
    """The strawberry field behind a graphql field if reading it is an attribute read."""
    definition = field_definition(field_def)
    if definition is None or not definition.is_basic_field:
        return None
    return definition if has_default_resolver(field_def) else None


def _non_null(inner: Complete) -> Complete:
    def complete(value: Any) -> Any:
        completed = inner(value)
        if completed is None:
            raise Irregular
        return completed

    return complete


# Errors a compiled completion met in nullable fields (a refusal the parent settled), in
# the order graphql-core would meet them: [the path below where the completion started,
# innermost first; the error; the field's details]. Completions are synchronous and not
# re-entered, so one list serves every request: PlainFieldExecutor reports and empties it
# when a completion returns, and empties it when one gives up.
_REFUSED: list[tuple[list[str | int], Exception, Any]] = []


def _noted_under(before: int, step: str | int) -> None:
    """Puts `step` (a response key, a list index) into the path of the errors noted
    since `before`: they were met below it."""
    for refused in _REFUSED[before:]:
        refused[0].append(step)


def _listed(item: Complete, of_objects: bool) -> Complete:
    """A list's completion; a list of objects notes each item's index in the path of
    the errors met below it (an error value as a leaf item is irregular)."""

    def complete(value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, list | tuple):
            raise Irregular
        return [item(entry) for entry in value]

    if not of_objects:
        return complete

    def complete_objects(value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, list | tuple):
            raise Irregular
        completed = []
        for index, entry in enumerate(value):
            before = len(_REFUSED)
            completed.append(item(entry))
            if len(_REFUSED) != before:
                _noted_under(before, index)
        return completed

    return complete_objects


def _refusal(key: str, details: Any) -> Callable[[Exception], None]:
    """Notes an error value met in a nullable field (as graphql-core's
    `handle_field_error` would report it, later, at the field's path)."""

    def refused(error: Exception) -> None:
        _REFUSED.append(([key], error, details))

    return refused


def _under(inner: Complete, key: str, details: Any, type_: GraphQLOutputType) -> Complete:
    """An object or list field's completion under its response key: errors met below it
    get the key in their path, and, the field nullable, an error value as its value is
    noted and completed as null."""
    refused = None if is_non_null_type(type_) else _refusal(key, details)

    def complete(value: Any) -> Any:
        if refused is not None and isinstance(value, Exception):
            refused(value)
            return None
        before = len(_REFUSED)
        completed = inner(value)
        if len(_REFUSED) != before:
            _noted_under(before, key)
        return completed

    return complete


# Scalars whose every value of this Python class is its own completion.
_AS_IS: dict[Any, type] = {GraphQLString: str, GraphQLID: str, GraphQLBoolean: bool}


def leaf_completion(
    type_: GraphQLLeafType,
    non_null: bool = False,
    refused: Callable[[Exception], None] | None = None,
) -> Complete:
    """A scalar's or enum's completion. Values of the Python type the scalar hands back
    unchanged (a str for String and ID, a bool, a finite float, a 32-bit int) complete as
    themselves, and an enum member as its name, without a call into the type's coercion,
    which would answer the same; every other value goes through the coercion. An error
    value is irregular, or, given `refused` (a nullable field of an object), handed to it
    and completed as null."""
    coerce = type_.coerce_output_value

    def coerced(value: Any) -> Any:
        if value is None:
            if non_null:
                raise Irregular
            return None
        if isinstance(value, Exception):
            if refused is None:
                raise Irregular
            refused(value)
            return None
        result = coerce(value)
        if result is None or result is Undefined:
            raise Irregular
        return result

    same = _AS_IS.get(type_)
    if same is not None:
        return _passing(same, coerced)
    if type_ is GraphQLFloat:
        return _passing(float, coerced, math.isfinite)
    if type_ is GraphQLInt:
        return _passing(int, coerced, lambda value: -(2**31) <= value < 2**31)
    if isinstance(type_, CustomGraphQLEnumType):
        return _enum(type_, coerced)
    return coerced


def _passing(cls: type, coerced: Complete, fits: Callable[[Any], bool] | None = None) -> Complete:
    if fits is None:

        def complete(value: Any) -> Any:
            return value if value.__class__ is cls else coerced(value)

        return complete

    def complete_fitting(value: Any) -> Any:
        return value if value.__class__ is cls and fits(value) else coerced(value)

    return complete_fitting


def _enum(type_: CustomGraphQLEnumType, coerced: Complete) -> Complete:
    """strawberry's enum coercion answers the first name whose value equals the
    member's; members are looked up by identity (an Enum's hash is a Python call)."""
    names: dict[int, str] = {}
    members: list[Any] = list(type_.wrapped_cls)
    for member in members:
        for name, defined in type_.values.items():
            if member.value == defined.value:
                names.setdefault(id(member), name)
    cls = type_.wrapped_cls

    def complete(value: Any) -> Any:
        if value.__class__ is cls:
            name = names.get(id(value))
            if name is not None:
                return name
        return coerced(value)

    return complete


class _Never:
    """No value is of this class: a field whose completion always runs."""


class _Read(NamedTuple):
    """How a compiled object reads one of its fields off the object: `code`, a Python
    expression over `value` (an attribute, a prepared value, a constant), where there is
    one; otherwise the call `read(value)`."""

    read: Complete
    code: str | None = None


def _object(fields: list[tuple[str, _Read, type, Complete]]) -> Complete:
    """`fields`: each response key, how to read it from the object, the class of values
    that complete as themselves (text for String and ID, bool for Boolean: checked here,
    saving a call per value), and how to complete any other value.

    The completion is generated as the source of one function building the response
    dict, a line per field, and compiled once per selection: a page completes hundreds of
    objects, and a comprehension over the fields' tuples pays its own frame, an unpacking
    and an attribute reader's call per field for each (bench (b) calls per page, `python
    -m bench.inprocess --cold --calls`). What reaches the source: response keys and type
    names as string literals (`repr` of GraphQL names, which the parser admits only as
    [_A-Za-z][_0-9A-Za-z]*), and the schema's Python attribute names where they are
    identifiers (else the field is read through its reader's call)."""
    env: dict[str, Any] = {"Irregular": Irregular}
    lines = [
        "def complete(value):",
        "    if value is None:",
        "        return None",
        "    if isinstance(value, Exception):",
        "        raise Irregular",
        "    return {",
    ]
    for index, (key, read, same, finish) in enumerate(fields):
        got = read.code
        if got is None:
            env[f"read_{index}"] = read.read
            got = f"read_{index}(value)"
        if finish is _same:
            entry = got
        elif same is _Never:
            env[f"finish_{index}"] = finish
            entry = f"finish_{index}({got})"
        else:
            env[f"same_{index}"], env[f"finish_{index}"] = same, finish
            entry = f"got if (got := {got}).__class__ is same_{index} else finish_{index}(got)"
        lines.append(f"        {key!r}: {entry},")
    lines.append("    }")
    exec(compile("\n".join(lines), "<c360: a compiled object>", "exec"), env)
    complete: Complete = env["complete"]
    return complete


def _same_class(type_: GraphQLOutputType) -> type:
    """The class of values a field of this type completes as themselves, unchecked."""
    named = type_.of_type if is_non_null_type(type_) else type_
    return _AS_IS.get(named, _Never)


def _constant(value: str) -> _Read:
    def read(source: Any) -> Any:
        return value

    return _Read(read, repr(value))


def _same(value: Any) -> Any:
    return value


def prepared_field(field_def: GraphQLField) -> bool:
    definition = field_definition(field_def)
    return definition is not None and definition.metadata.get(PREPARED) is True


def _prepared_getter(key: str) -> _Read:
    def get(source: Any) -> Any:
        return source.prepared[key]  # not there: KeyError, the resolver runs

    return _Read(get, f"value.prepared[{key!r}]")


def _getter(field: StrawberryField) -> _Read:
    """Reads a basic field's value off its object, as its default resolver would."""
    resolve, name = field.default_resolver, field.python_name
    if resolve is getattr:
        code = f"value.{name}" if name.isidentifier() and not keyword.iskeyword(name) else None
        return _Read(operator.attrgetter(name), code)
    return _Read(lambda source: resolve(source, name))


def _then(get: Complete, complete: Complete) -> Complete:
    def read(source: Any) -> Any:
        return complete(get(source))

    return read


class _Shared:
    """Plans and readers kept across requests, keyed by schema type and the syntax nodes
    of a selection. The parse memo (`ParsedDocuments`) hands every request with the same
    document the same nodes, so a page asked again and again is compiled once. Only for
    documents without @skip/@include: elsewhere how fields group depends on the variables."""

    LIMIT = 4096

    def __init__(self) -> None:
        # key -> (what keeps the key's ids from being reused, the compiled value)
        self.entries: dict[tuple[Any, ...], tuple[Any, Any]] = {}
        self.conditional: dict[int, tuple[Any, bool]] = {}  # id(operation) -> uses them

    def uses_conditions(self, operation: Any, fragments: Mapping[str, Any]) -> bool:
        found = self.conditional.get(id(operation))
        if found is None or found[0] is not operation:
            if len(self.conditional) >= self.LIMIT:
                self.conditional.clear()
            uses = any(_conditional(node) for node in (operation, *fragments.values()))
            found = self.conditional[id(operation)] = (operation, uses)
        return found[1]

    def get(self, key: tuple[Any, ...]) -> tuple[Any, Any] | None:
        return self.entries.get(key)

    def put(self, key: tuple[Any, ...], keep: Any, value: Any) -> None:
        if len(self.entries) >= self.LIMIT:
            self.entries.clear()
        self.entries[key] = (keep, value)


def _conditional(node: Any) -> bool:
    """Whether a selection below this node carries @skip or @include."""
    selection_set = getattr(node, "selection_set", None)
    for selection in selection_set.selections if selection_set else ():
        if any(d.name.value in ("skip", "include") for d in selection.directives or ()):
            return True
        if _conditional(selection):
            return True
    return False


_SHARED = _Shared()


class PlainFieldExecutor(ExecutionContextBase):
    """graphql-core's executor, with plain selections completed by compiled functions."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        middleware = self.middleware_manager
        # A schema extension with a `resolve` hook must see every field; incremental
        # delivery (@defer/@stream) changes how lists complete: both keep the usual path.
        self._enabled = (middleware is None or not middleware.middlewares) and (
            self.schema.get_directive("stream") is None
            and self.schema.get_directive("defer") is None
        )
        self._plans: dict[tuple[GraphQLOutputType, int], Complete | None] = {}
        self._basic: dict[int, StrawberryField | None] = {}
        # id(selection of one field) -> (its parent type, how to read and complete it,
        # the field's type)
        self._readers: dict[int, tuple[GraphQLObjectType, Complete | None, Any]] = {}
        self._held: list[Any] = []  # plans are keyed by id(): keep their selections alive
        # (id(error value), id(field details)) -> the error located at the field, no path
        self._located: dict[tuple[int, int], tuple[Any, GraphQLError]] = {}
        self._shared = (
            _SHARED
            if self._enabled
            and not _SHARED.uses_conditions(self.operation, self.fragment_definitions)
            else None
        )

    def _shared_key(self, type_: Any, field_details: Any) -> tuple[tuple[Any, ...], Any] | None:
        """The key of a selection across requests, and the nodes it names; None when
        its plan may not be shared."""
        if self._shared is None:
            return None
        nodes = tuple(detail.node for detail in field_details)
        if any(detail.fragment_variable_values is not None for detail in field_details):
            return None
        return (type_, *map(id, nodes)), nodes

    def _basic_field(self, field_def: GraphQLField) -> StrawberryField | None:
        key = id(field_def)
        try:
            return self._basic[key]
        except KeyError:
            found = self._basic[key] = basic_field(field_def)
            return found

    def _plan(self, type_: GraphQLOutputType, field_details: Any) -> Complete | None:
        key = (type_, id(field_details))
        try:
            return self._plans[key]
        except KeyError:
            pass
        self._held.append(field_details)
        shared = self._shared_key(("plan", type_), field_details)
        found = None if shared is None or self._shared is None else self._shared.get(shared[0])
        if found is not None:
            plan: Complete | None = found[1]
        else:
            plan = self._compile(type_, field_details)
            if shared is not None and self._shared is not None:
                self._shared.put(shared[0], shared[1], plan)
        self._plans[key] = plan
        return plan

    def _compile(self, type_: GraphQLOutputType, field_details: Any) -> Complete | None:
        if is_non_null_type(type_):
            if is_leaf_type(type_.of_type):
                return leaf_completion(type_.of_type, non_null=True)
            inner = self._compile(type_.of_type, field_details)
            return None if inner is None else _non_null(inner)
        if is_list_type(type_):
            item = self._compile(type_.of_type, field_details)
            of = type_.of_type.of_type if is_non_null_type(type_.of_type) else type_.of_type
            return None if item is None else _listed(item, of_objects=not is_leaf_type(of))
        if is_leaf_type(type_):
            return leaf_completion(type_)
        if is_object_type(type_):
            return self._compile_object(type_, field_details)
        return None  # interfaces and unions: the runtime type is graphql-core's to find

    def _compile_object(self, type_: GraphQLObjectType, field_details: Any) -> Complete | None:
        if type_.is_type_of is not None:
            return None
        grouped, deferred, _ = self.collect_subfields(type_, field_details)
        if deferred:
            return None
        fields: list[tuple[str, _Read, type, Complete]] = []
        for key, sub_details in grouped.items():
            name = sub_details[0].node.name.value
            if name == "__typename":
                fields.append((key, _constant(type_.name), str, _same))
                continue
            field_def = self.schema.get_field(type_, name)
            if field_def is None:
                return None
            basic = self._basic_field(field_def)
            if basic is None and not prepared_field(field_def):
                return None
            field_type = field_def.type
            if is_leaf_type(field_type):  # nullable: a refusal there is noted, and null
                sub = leaf_completion(field_type, refused=_refusal(key, sub_details))
            else:
                plan = self._plan(field_type, sub_details)
                if plan is None:
                    return None
                non_null_leaf = is_non_null_type(field_type) and is_leaf_type(field_type.of_type)
                sub = plan if non_null_leaf else _under(plan, key, sub_details, field_type)
            # A prepared field the parent has not (yet) settled for this object makes the
            # whole object irregular: graphql-core completes it and runs the resolver.
            read = _getter(basic) if basic is not None else _prepared_getter(key)
            fields.append((key, read, _same_class(field_type), sub))
        return _object(fields)

    def _reader(
        self, parent_type: GraphQLObjectType, field_details_list: Any
    ) -> tuple[GraphQLObjectType, Complete | None, Any]:
        """How to read one field of a source and complete it without its resolver: a
        basic field's attribute, or a prepared value; None if the selection is not plain."""
        self._held.append(field_details_list)
        node = field_details_list[0].node
        field_def = self.schema.get_field(parent_type, node.name.value)
        type_ = None if field_def is None else field_def.type
        shared = self._shared_key(("read", parent_type), field_details_list)
        known = None if shared is None or self._shared is None else self._shared.get(shared[0])
        if known is not None:
            found: tuple[GraphQLObjectType, Complete | None, Any] = (parent_type, known[1], type_)
            self._readers[id(field_details_list)] = found
            return found
        read: Complete | None = None
        basic = None if field_def is None else self._basic_field(field_def)
        if field_def is not None and (basic is not None or prepared_field(field_def)):
            plan = self._plan(field_def.type, field_details_list)
            if plan is not None and basic is not None:
                read = _then(_getter(basic).read, plan)
            elif plan is not None:
                read = _then(_prepared_getter((node.alias or node.name).value).read, plan)
        if shared is not None and self._shared is not None:
            self._shared.put(shared[0], shared[1], read)
        found = self._readers[id(field_details_list)] = (parent_type, read, type_)
        return found

    def execute_field(
        self,
        parent_type: GraphQLObjectType,
        source: Any,
        field_details_list: Any,
        path: Path,
        position_context: Any,
    ) -> Any:
        if self._enabled:
            found = self._readers.get(id(field_details_list))
            if found is None or found[0] is not parent_type:
                found = self._reader(parent_type, field_details_list)
            read = found[1]
            if read is not None:
                try:
                    return self._report(read(source), path)
                except Exception:  # irregular: graphql-core completes and reports it
                    _REFUSED.clear()
                error = self._error_value(parent_type, source, field_details_list)
                if error is not None:
                    # What graphql-core does with a resolver's error value, without
                    # calling the resolver (and its guard) to get the value again.
                    self.handle_field_error(error, found[2], field_details_list, path)
                    return None
        return super().execute_field(
            parent_type, source, field_details_list, path, position_context
        )

    def _report(self, completed: Any, path: Path) -> Any:
        """Reports the errors a compiled completion met below `path`, where graphql-core
        would have: located at their fields, in the order met."""
        if _REFUSED:
            refused = list(_REFUSED)
            _REFUSED.clear()
            for below, error, details in refused:  # nullable fields: none propagates
                at = path
                for key in reversed(below):
                    at = at.add_key(key)
                self.collected_errors.add(self._located_at(error, details, at.as_list()), at)
        return completed

    def _located_at(self, error: Exception, details: Any, path: list[str | int]) -> GraphQLError:
        """`located_error(error, nodes, path)`: built, with its source locations, once
        per error value and field, then copied for each path. A page's refusals are the
        same few errors at the same few fields, hundreds of them on a policy-heavy page,
        and working out the line and column of each again was a large share of its CPU
        (bench (d) CPU per page)."""
        key = (id(error), id(details))
        found = self._located.get(key)
        if found is None:
            nodes = [field_details.node for field_details in details]
            found = self._located[key] = (error, located_error(error, nodes, None))
        located = found[1]
        if located is error:  # an error that had its path already is reported as it is
            return located
        copy = GraphQLError.__new__(GraphQLError)
        for slot in GraphQLError.__slots__:
            setattr(copy, slot, getattr(located, slot))
        copy.args = located.args
        copy.__cause__, copy.__context__ = located.__cause__, located.__context__
        copy.__traceback__ = located.__traceback__
        copy.path = path
        return copy

    def _error_value(
        self, parent_type: GraphQLObjectType, source: Any, field_details_list: Any
    ) -> Exception | None:
        """The error a plain field's value is (a refusal the parent settled), if it is."""
        node = field_details_list[0].node
        field_def = self.schema.get_field(parent_type, node.name.value)
        if field_def is None:
            return None
        basic = self._basic_field(field_def)
        if basic is not None:
            value = basic.default_resolver(source, basic.python_name)
        else:
            prepared = getattr(source, "prepared", None)
            value = prepared.get((node.alias or node.name).value) if prepared else None
        return value if isinstance(value, Exception) else None

    def complete_value(
        self,
        return_type: GraphQLOutputType,
        field_details_list: Any,
        info: Any,
        path: Path,
        result: Any,
        position_context: Any,
    ) -> Any:
        if self._enabled and not isinstance(result, Exception):
            plan = self._plan(return_type, field_details_list)
            if plan is not None:
                try:
                    return self._report(plan(result), path)
                except Exception:  # irregular: graphql-core completes and reports it
                    _REFUSED.clear()
        return super().complete_value(
            return_type, field_details_list, info, path, result, position_context
        )
