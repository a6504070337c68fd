"""The graph's types, built at start from its declaration (resolvers/declaration.py).

`build_graph(declaration)` makes the strawberry types (Customer, its nested record types,
enums, the connection) and the tables the loader settles fields from: for each Customer
field without arguments, how a system's value becomes the field's value (`plain`); for
each list field with arguments, how its arguments shape the list (`arguments`). A
customer holds its CUID, the system keys the crosswalk gave for it, and the source
records its parent fetched in advance; a field reads its binding's record, and one whose
source failed is null, the failure reported once per source. Nothing here names a field
of any department: all of it comes from the declaration.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import inspect
import math
import operator
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Optional

import strawberry
from graphql import GraphQLError
from strawberry.types import Info

from connectors.base import SourceUnavailable
from policies.directive import Policy
from resolvers.bindings import Binding, GraphBindings, bindings_of
from resolvers.context import GraphContext
from resolvers.declaration import ROOT, Declaration, FieldDecl, TypeDecl, TypeRef
from resolvers.execution import PREPARED_FIELD
from resolvers.guard import PolicyGuard
from resolvers.merging import NO_RULES, merge_records
from resolvers.selection import names_below

# A customer with no duplicate record in any system (resolvers/merging.py).
NO_DUPLICATES: Mapping[str, tuple[str, ...]] = MappingProxyType({})


def user_error(message: str, code: str, **extensions: Any) -> GraphQLError:
    """An error for the caller: its code and what it names (never a value it sent)."""
    return GraphQLError(message, extensions={"code": code, **extensions})


def with_signature(
    resolve: Callable[..., Any], parameters: list[tuple[str, Any, Any]], returns: Any
) -> Any:
    """Gives `resolve(self, info, **arguments)` the declared arguments (name, annotation,
    default; `inspect.Parameter.empty` for none), which strawberry reads as the field's
    arguments."""
    params = [
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("info", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Info),
    ]
    annotations: dict[str, Any] = {"info": Info, "return": returns}
    for name, annotation, default in parameters:
        kind = inspect.Parameter.KEYWORD_ONLY
        params.append(inspect.Parameter(name, kind, default=default, annotation=annotation))
        annotations[name] = annotation
    resolve.__signature__ = inspect.Signature(params, return_annotation=returns)  # type: ignore[attr-defined]
    resolve.__annotations__ = annotations
    return resolve


def bad_input(argument: str, message: str) -> GraphQLError:
    return GraphQLError(message, extensions={"code": "BAD_USER_INPUT", "argument": argument})


def page_size(value: int | None, argument: str, maximum: int, default: int) -> int:
    if value is None:
        return default
    if value < 0:
        raise bad_input(argument, f"'{argument}' must not be negative")
    if value > maximum:
        raise bad_input(argument, f"'{argument}' must be at most {maximum}")
    return value


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


Wanted = AbstractSet[str] | None  # the graph fields a request may read of a type (None: all)
Shape = Callable[[Any], Any]  # a bound value -> the field's value
# Fetched records (or the failure) per (source, entity), filled by the parent resolver.
Records = dict[tuple[str, str], Any]


# --- values: a system's value -> the declared type's, or ValueError/TypeError ----------


def _timestamp(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    if not isinstance(value, str):
        raise ValueError("not a timestamp")
    parsed = dt.datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _date(value: Any) -> dt.date:
    if isinstance(value, dt.date):
        return value
    if not isinstance(value, str):
        raise ValueError("not a date")
    return dt.date.fromisoformat(value[:10])


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("not a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number


def _integer(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise TypeError("not an integer")
    number = int(value)
    if not -(2**31) <= number < 2**31:
        raise ValueError("outside a GraphQL Int")
    return number


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool | int):
        raise TypeError("not a boolean")
    return bool(value)


def _text(value: Any) -> str | None:
    """A top-level text value: trimmed, and empty read as absent."""
    return None if value is None else str(value).strip() or None


_SCALARS: dict[str, tuple[Any, Callable[[Any], Any]]] = {
    "String": (str, str),
    "ID": (strawberry.ID, str),
    "Int": (int, _integer),
    "Float": (float, _number),
    "Boolean": (bool, _boolean),
    "DateTime": (dt.datetime, _timestamp),
    "Date": (dt.date, _date),
}
_PARSED_LATE = frozenset({"DateTime", "Date"})  # parsed only where a request reads them


def _required(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def parse_required(value: Any) -> Any:
        if value is None:
            raise ValueError("missing a required value")
        return parse(value)

    return parse_required


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def parse_optional(value: Any) -> Any:
        return None if value is None else parse(value)

    return parse_optional


def _absent() -> Any:
    raise ValueError("missing a required value")


def _records_of(value: Any) -> list[Mapping[str, Any]]:
    if not isinstance(value, list):
        raise TypeError("expected a list of records")
    return value


def _record_of(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("expected a record")
    return value


class EnumReader:
    """A declared enum: its strawberry type, and a system's codes read as its values (the
    value's name in any case and spacing, or a code `@code` maps to it)."""

    def __init__(
        self, name: str, values: tuple[str, ...], codes: Mapping[str, str], doc: str | None
    ):
        members: Any = enum.Enum(name, {v: v for v in values})  # type: ignore[misc]
        self.type: Any = strawberry.enum(members, description=doc)
        self._known: dict[Any, Any] = {v: self.type[v] for v in values}
        self.known = self._known  # read by generated readers: spelling -> member
        self._known.update({code: self.type[value] for code, value in codes.items()})
        self._codes = len(self._known)
        # What a write sends for a value: the system's first code for it, else its name.
        self.system_code: dict[Any, str] = {self.type[v]: v for v in values}
        for code, value in reversed(list(codes.items())):
            self.system_code[self.type[value]] = code

    def __call__(self, value: Any) -> Any:
        found = self._known.get(value) if value.__class__ is str else None
        if found is None:
            found = self.type(str(value).strip().upper())  # ValueError for anything else
            if value.__class__ is str and len(self._known) < self._codes + 64:
                self._known[value] = found  # spellings come from a system: bounded
        return found


@dataclass
class RecordType:
    """A declared record type: its strawberry class and how a system's record becomes one
    (generated per set of wanted fields: one expression per field, no loop over them)."""

    decl: TypeDecl
    cls: Any
    parsers: dict[str, Callable[[Any], Any]]  # field -> its value's parser (nullability included)
    late: frozenset[str]  # fields parsed only when wanted
    always: frozenset[str] = frozenset()  # fields a list's order or filter reads
    # field -> the parser of a present value, and whether an absent one is an error: the
    # generated reader tests for None inline instead of a wrapper call per value
    base: dict[str, Callable[[Any], Any]] = field(default_factory=dict)
    required: frozenset[str] = frozenset()
    _readers: dict[frozenset[str] | None, Callable[[Any], Any]] = field(default_factory=dict)

    def reader(self, wanted: Wanted) -> Callable[[Any], Any]:
        """record -> object, parsing a late field only when `wanted` may read it."""
        key = None if wanted is None else frozenset(wanted) & self.late
        found = self._readers.get(key)
        if found is None:
            names = {"cls": self.cls, "_absent": _absent, "_record_of": _record_of}
            arguments = []
            for index, f in enumerate(self.decl.fields):
                read = f.name in self.always or f.name not in self.late or key is None
                if not (read or f.name in (key or ())):
                    arguments.append(f"{f.name}=None")  # nothing reads it: not parsed
                    continue
                parse = self.base.get(f.name) or self.parsers[f.name]
                names[f"p{index}"] = parse
                absent = "_absent()" if f.name in self.required else "None"
                got = f"(v{index} := r.get({f.attribute!r}))"
                value = _fast_path(f.type, f"v{index}", f"p{index}", parse, names)
                arguments.append(f"{f.name}=({value} if {got} is not None else {absent})")
            code = (
                "def read(record):\n"
                " r = record if record.__class__ is dict else _record_of(record)\n"
                f" return cls({', '.join(arguments)})\n"
            )
            exec(compile(code, f"<record {self.decl.name}>", "exec"), names)
            found = self._readers[key] = names["read"]
            if len(self._readers) > 64:  # bounded: wanted sets come from documents
                self._readers.clear()
                self._readers[key] = found
        return found

    def many(self, wanted: Wanted) -> Callable[[Any], list[Any]]:
        read = self.reader(wanted)
        return lambda records: [read(r) for r in _records_of(records)]


# A present value that is already what the scalar holds passes without a call: the
# generated readers test its class inline (a page reads thousands of values).
_INLINE = {
    "Int": "({v} if {v}.__class__ is int and -2147483648 <= {v} < 2147483648 else {p}({v}))",
    "Boolean": "({v} if {v}.__class__ is bool else {p}({v}))",
    "Float": "({v} if {v}.__class__ is float and {v} - {v} == 0 else {p}({v}))",  # finite
}


def _fast_path(ref: TypeRef, v: str, p: str, parse: Any, names: dict[str, Any]) -> str:
    """The expression a generated reader parses a present value `v` with."""
    if ref.is_list:
        return f"{p}({v})"
    if isinstance(parse, EnumReader):  # a known spelling by one dict lookup
        names[f"k_{p}"] = parse.known
        return f"(k_{p}.get({v}) or {p}({v}))"
    template = _INLINE.get(ref.name)
    return template.format(v=v, p=p) if template else f"{p}({v})"


def _annotation(ref: TypeRef, python: Mapping[str, Any], optional_top: bool = True) -> Any:
    inner = python[ref.name]
    if ref.is_list:
        item = inner if ref.item_non_null else Optional[inner]  # noqa: UP045
        inner = list[item]  # type: ignore[valid-type]
    return inner if ref.non_null and not optional_top else Optional[inner]  # noqa: UP045


@dataclass
class Graph:
    """A declaration, built: the types, the fields' tables, the bindings."""

    declaration: Declaration
    customer: Any  # the Customer class
    connection: Any
    edge: Any
    page_info: Any
    bindings: GraphBindings
    # Customer fields without arguments, settled in bulk by the parent:
    # field -> (attribute, the request's shape of the bound value given what it selects)
    plain: dict[str, tuple[str, Callable[[GraphContext, Wanted], Shape]]]
    # Customer fields with arguments: field -> shape for (ctx, arguments, wanted)
    arguments: dict[str, Callable[[GraphContext, Mapping[str, Any], Wanted], Shape]]
    policies: dict[str, str]  # Customer field -> policy name
    enums: dict[str, EnumReader]
    records: dict[str, RecordType]
    federation: bool = False

    @property
    def erase_actions(self) -> dict[str, str]:
        """`@erase(actions:)`: the write that erases a person's record, by system."""
        return dict(action.split(".", 1) for action in self.declaration.root.erase)

    @property
    def field_names(self) -> frozenset[str]:
        """Customer's field names: what a console filter may name."""
        return frozenset(f.name for f in self.declaration.root.fields) | {"id"}

    def argument_defaults(self, name: str) -> dict[str, Any]:
        decl = self.declaration.root.field(name)
        return {a.name: a.default for a in decl.arguments} if decl else {}


class CustomerBase:
    """What every built Customer class has besides its declared fields."""

    id: strawberry.ID
    links: Mapping[str, str]
    records: Records
    # Fields with arguments that a sibling settled for this customer, by response key,
    # read by the executor instead of calling the resolver (resolvers/execution.py).
    prepared: dict[str, Any]

    def _resolve(
        self, info: Info[GraphContext, None], field: str, arguments: Mapping[str, Any]
    ) -> Any:
        """A field with arguments: its value, or an awaitable of it when the parent did
        not prefetch its records."""
        ctx = info.context
        binding = ctx.bindings.customer.get(field)
        if binding is None:
            return None
        shape = ctx.graph.arguments[field](ctx, arguments, names_below(info))
        if binding.slot in self.records:
            value = self._shape(ctx, info, binding, self.records[binding.slot], shape)
            siblings = ctx.siblings.get(id(self))
            if siblings is not None:
                siblings.prepare(ctx, field, str(info.path.key), shape, self)
            return value
        return self._load(ctx, info, binding, shape)

    async def _load(
        self, ctx: GraphContext, info: Info[GraphContext, None], binding: Binding, shape: Shape
    ) -> Any:
        key = self.links.get(binding.source)
        fetched: Any = None
        if binding.source not in ctx.identity.linked_systems:
            fetched = SourceUnavailable(binding.source, "no record of this system is linked")
        elif key is not None:
            others = ctx.identity.duplicates.get(self.id, NO_DUPLICATES).get(binding.source, ())
            try:
                if not others:
                    fetched = await ctx.loader(*binding.slot).load(key)
                else:  # every record of the person's, in the same call (resolvers/merging.py)
                    records = await ctx.loader(*binding.slot).load_many([key, *others])
                    rules = ctx.bindings.merges.get(binding.slot, NO_RULES)
                    fetched = merge_records(records, rules)
            except SourceUnavailable as error:
                fetched = error
        self.records[binding.slot] = fetched
        return self._shape(ctx, info, binding, fetched, shape)

    @staticmethod
    def _shape(
        ctx: GraphContext,
        info: Info[GraphContext, None],
        binding: Binding,
        fetched: Any,
        shape: Shape,
    ) -> Any:
        value, failure = shape_value(binding, fetched, shape)
        if failure is not None:
            ctx.fail(failure, info.path.as_list())
        return value


def shape_value(
    binding: Binding, fetched: Any, shape: Shape
) -> tuple[Any, SourceUnavailable | None]:
    """A field's value from its source's record, or the failure to report: the system
    failed, or answered something that does not fit the field."""
    if fetched is None:
        return None, None
    if isinstance(fetched, SourceUnavailable):
        return None, fetched
    attribute = binding.attribute  # binding.pick, without a call per customer and field
    value = fetched if attribute is None else fetched.get(attribute)
    if value is None:
        return None, None
    try:
        return shape(value), None
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        # The exception's text may quote the value; only its type goes to the log.
        reason = f"malformed {binding.entity} record ({type(error).__name__})"
        return None, SourceUnavailable(binding.source, reason)


def version_token(masks: Mapping[str, Any], value: Any) -> str | None:
    """A `@version` field: an opaque token of the system's version (updated-at, a row
    version), keyed with the policy file's hash key so that it says nothing of the value;
    a write's `ifVersion` is compared with it."""
    if value is None:
        return None
    return "v1." + str(masks["hash"](str(value))).rsplit(":", 1)[-1]


def _as_is(shape: Shape) -> Callable[[GraphContext, Wanted], Shape]:
    return lambda ctx, wanted: shape


def _resolve_reference(cls: Any, info: Info[GraphContext, None], id: strawberry.ID) -> Any:
    from resolvers.loading import entity_reference

    return entity_reference(info, id)


class _Builder:
    def __init__(self, declaration: Declaration, federation: bool = False) -> None:
        self.declaration = declaration
        self.federation = federation
        self.python: dict[str, Any] = {name: cls for name, (cls, _) in _SCALARS.items()}
        self.enums: dict[str, EnumReader] = {}
        self.records: dict[str, RecordType] = {}

    def parser(self, ref: TypeRef, top: bool = False, bare: bool = False) -> Callable[[Any], Any]:
        """How a system's value becomes a value of this type (nullability included; `bare`:
        of a value known to be present)."""
        if ref.name in self.records:
            record = self.records[ref.name]
            parse: Callable[[Any], Any] = _LazyList(record) if ref.is_list else _LazyOne(record)
        else:
            one = self.enums[ref.name] if ref.name in self.enums else _SCALARS[ref.name][1]
            if top and ref.name == "String":
                one = _text
            if ref.is_list:
                item = one if ref.item_non_null else _optional(one)
                parse = _list_of(item)
            else:
                parse = one
        if top or bare:
            return parse  # a Customer field: absent values never reach the parser
        return _required(parse) if ref.non_null else _optional(parse)

    def build(self) -> Graph:
        declaration = self.declaration
        for enum_decl in declaration.enums.values():
            reader = EnumReader(
                enum_decl.name, enum_decl.values, enum_decl.codes, enum_decl.description
            )
            self.enums[enum_decl.name] = reader
            self.python[enum_decl.name] = reader.type
        nested = [t for name, t in declaration.types.items() if name != ROOT]
        # Classes first (fields may name each other), then their parsers.
        for decl in nested:
            self.records[decl.name] = RecordType(decl, None, {}, frozenset())
        for decl in _dependency_order(nested):
            annotations: dict[str, Any] = {}
            namespace: dict[str, Any] = {"__annotations__": annotations}
            for f in decl.fields:
                annotations[f.name] = _annotation(f.type, self.python, optional_top=False)
                namespace[f.name] = strawberry.field(name=f.name, description=f.description)
            cls = strawberry.type(type(decl.name, (), namespace), description=decl.description)
            self.python[decl.name] = cls
            self.records[decl.name].cls = cls
        for decl in nested:
            record = self.records[decl.name]
            record.parsers = {f.name: self.parser(f.type) for f in decl.fields}
            record.base = {f.name: self.parser(f.type, bare=True) for f in decl.fields}
            record.required = frozenset(f.name for f in decl.fields if f.type.non_null)
            record.late = frozenset(f.name for f in decl.fields if f.type.name in _PARSED_LATE)
        root = declaration.root
        for f in root.fields:  # what a list's order and filters read is always parsed
            if f.list_rule is not None and f.type.name in self.records:
                record = self.records[f.type.name]
                extra = {f.list_rule.order_by, *f.list_rule.filters} - {None}
                record.always = record.always | frozenset(extra)  # type: ignore[arg-type]
        plain: dict[str, tuple[str, Callable[[GraphContext, Wanted], Shape]]] = {}
        arguments: dict[str, Callable[[GraphContext, Mapping[str, Any], Wanted], Shape]] = {}
        annotations = {"id": strawberry.ID}
        namespace = {"__annotations__": annotations}
        for name in ("links", "records", "prepared"):
            annotations[name] = strawberry.Private[dict]  # type: ignore[type-arg]
            namespace[name] = dataclasses.field(default_factory=dict)
        policies: dict[str, str] = {}
        for f in root.fields:
            if f.name == "id":
                continue
            if f.policy:
                policies[f.name] = f.policy
            directives = [Policy(name=f.policy)] if f.policy else []
            annotation = _annotation(f.type, self.python)
            if f.arguments:
                arguments[f.name] = self.list_shape(f)
                namespace[f.name] = strawberry.field(
                    resolver=_argument_resolver(f, annotation, self.python),
                    name=f.name,
                    description=f.description,
                    directives=directives,
                    extensions=[PolicyGuard(f.policy)],
                    metadata=PREPARED_FIELD,
                )
                continue
            annotations[f.name] = annotation
            namespace[f.name] = strawberry.field(
                default=None, name=f.name, description=f.description, directives=directives
            )
            plain[f.name] = (f.name, self.plain_shape(f))
        if self.federation:  # a Federation 2 entity a router resolves by CUID
            namespace["resolve_reference"] = classmethod(_resolve_reference)
            customer = strawberry.federation.type(
                type(ROOT, (CustomerBase,), namespace), keys=["id"], description=root.description
            )
        else:
            customer = strawberry.type(
                type(ROOT, (CustomerBase,), namespace), description=root.description
            )
        page_info = PageInfo
        edge = strawberry.type(
            type("CustomerEdge", (), {"__annotations__": {"cursor": str, "node": customer}})
        )
        connection = strawberry.type(
            type(
                "CustomerConnection",
                (),
                {"__annotations__": {"edges": list[edge], "page_info": page_info}},  # type: ignore[valid-type]
            ),
            description="A Relay cursor connection over customers, in CUID order.",
        )
        return Graph(
            declaration=declaration,
            customer=customer,
            connection=connection,
            edge=edge,
            page_info=page_info,
            bindings=bindings_of(declaration),
            plain=plain,
            arguments=arguments,
            policies=policies,
            enums=self.enums,
            records=self.records,
        )

    def plain_shape(self, f: FieldDecl) -> Callable[[GraphContext, Wanted], Shape]:
        if f.version:
            return lambda ctx, wanted: lambda value: version_token(ctx.guard.masks, value)
        if f.derive is not None:
            return _as_is(self.derived(f))
        if f.type.name in self.records:
            record = self.records[f.type.name]
            if f.type.is_list:
                return lambda ctx, wanted: record.many(wanted)
            return lambda ctx, wanted: record.reader(wanted)
        return _as_is(self.parser(f.type, top=True))

    def derived(self, f: FieldDecl) -> Shape:
        derive = f.derive
        assert derive is not None
        root = self.declaration.root
        bound = root.field(derive.source)
        assert bound is not None
        item = self.declaration.types[bound.type.name]
        record = self.records[item.name]
        of = item.field(derive.of) if derive.of else None
        of_key = of.attribute if of else None
        parse_of = record.base[of.name] if of else None
        where: tuple[str, Callable[[Any], Any], Any] | None = None
        if derive.where is not None:
            where_field = item.field(derive.where[0])
            assert where_field is not None
            parse_where = record.base[where_field.name]
            where = (where_field.attribute, parse_where, parse_where(derive.where[1]))

        op, digits, integer = derive.op, derive.round, f.type.name == "Int"

        def compute(records: Any) -> Any:
            rows = _records_of(records)
            if where is not None:  # an item without the value is not one of them
                key, parse, wanted = where
                rows = [r for r in rows if (w := r.get(key)) is not None and parse(w) == wanted]
            if op == "count":
                return len(rows)
            assert parse_of is not None
            got = of_key or ""
            values = [parse_of(v) for r in rows if (v := r.get(got)) is not None]
            if not values:
                return None
            if op == "sum":
                result: Any = sum(values)
            elif op == "mean":
                result = sum(values) / len(values)
            elif op == "min":
                result = min(values)
            elif op == "max":
                result = max(values)
            else:  # latest: the last in the system's order is not "latest"; the greatest is
                result = max(values)
            if integer and isinstance(result, float):
                result = round(result)
            elif digits is not None and isinstance(result, float):
                result = round(result, digits)
            return result

        return compute

    def list_shape(
        self, f: FieldDecl
    ) -> Callable[[GraphContext, Mapping[str, Any], Wanted], Shape]:
        rule = f.list_rule
        record = self.records[f.type.name]
        defaults = {a.name: a.default for a in f.arguments}
        limit_name = rule.limit if rule else None
        limit_default = defaults.get(limit_name) if limit_name else None
        order = operator.attrgetter(rule.order_by) if rule and rule.order_by else None
        descending = bool(rule and rule.descending)
        filters = rule.filters if rule else ()

        def shape_for(ctx: GraphContext, given: Mapping[str, Any], wanted: Wanted) -> Shape:
            arguments = {**defaults, **given}
            limit = None
            if limit_name is not None:
                default = limit_default if isinstance(limit_default, int) else ctx.max_page_size
                limit = page_size(arguments.get(limit_name), limit_name, ctx.max_page_size, default)
            wanted_here = None if wanted is None else set(wanted)
            read = record.many(wanted_here)
            equal = [
                (operator.attrgetter(n), arguments[n])
                for n in filters
                if arguments.get(n) is not None
            ]

            def shape(records: Any) -> list[Any]:
                items = read(records)
                for get, value in equal:
                    items = [item for item in items if get(item) == value]
                if order is not None:
                    items.sort(key=order, reverse=descending)
                return items if limit is None else items[:limit]

            return shape

        return shape_for


class _LazyList:
    """A nested list of records inside a record, read with every field wanted."""

    def __init__(self, record: RecordType) -> None:
        self.record = record

    def __call__(self, value: Any) -> Any:
        return self.record.many(None)(value)


class _LazyOne:
    def __init__(self, record: RecordType) -> None:
        self.record = record

    def __call__(self, value: Any) -> Any:
        return self.record.reader(None)(value)


def _list_of(item: Callable[[Any], Any]) -> Callable[[Any], list[Any]]:
    def parse(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise TypeError("expected a list")
        return [item(v) for v in value]

    return parse


def _dependency_order(types: list[TypeDecl]) -> list[TypeDecl]:
    """Record types, each after the record types its fields name (a cycle is refused
    by the builder: nested records are trees)."""
    by_name = {t.name: t for t in types}
    ordered: list[TypeDecl] = []
    visiting: set[str] = set()

    def visit(t: TypeDecl) -> None:
        if t in ordered:
            return
        if t.name in visiting:
            raise ValueError(f"{t.name}: record types may not contain themselves")
        visiting.add(t.name)
        for f in t.fields:
            if f.type.name in by_name:
                visit(by_name[f.type.name])
        visiting.discard(t.name)
        ordered.append(t)

    for t in types:
        visit(t)
    return ordered


def _argument_resolver(f: FieldDecl, annotation: Any, python: Mapping[str, Any]) -> Any:
    """A Customer field with arguments: a resolver whose signature is the declared one."""
    name = f.name

    def resolve(self: CustomerBase, info: Info[GraphContext, None], **arguments: Any) -> Any:
        return self._resolve(info, name, arguments)

    parameters = []
    for argument in f.arguments:
        kind = _annotation(argument.type, python, optional_top=False)
        if not argument.type.non_null:
            kind = Optional[kind]  # noqa: UP045
        parameters.append((argument.name, kind, argument.default))
    with_signature(resolve, parameters, annotation)
    resolve.__name__ = name
    return resolve


def build_graph(declaration: Declaration, federation: bool = False) -> Graph:
    """`federation`: Customer is a Federation 2 entity (`@key(fields: "id")`)."""
    graph = _Builder(declaration, federation).build()
    graph.federation = federation
    return graph
