"""The graph declaration: SDL with c360's directives, read into plain objects.

A department's types and fields are declared once, in GraphQL's own schema language, each
field beside where it comes from and who may read it (as Apollo Connectors put `@connect`
beside a field). graphql-core parses and validates the SDL (unknown types, bad directive
arguments), so every error carries a line; this module adds c360's own checks and returns
a `Declaration` that the graph builder, the bindings check, `policy explain` and
`c360 graph check` all read. Nothing here imports strawberry or knows a department.
"""

from __future__ import annotations

import dataclasses
import keyword
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphql import (
    DirectiveNode,
    DocumentNode,
    EnumTypeDefinitionNode,
    FieldDefinitionNode,
    GraphQLError,
    InputObjectTypeDefinitionNode,
    InputValueDefinitionNode,
    ListTypeNode,
    NamedTypeNode,
    NonNullTypeNode,
    ObjectTypeDefinitionNode,
    ObjectTypeExtensionNode,
    TypeNode,
    parse,
    value_from_ast_untyped,
)
from graphql.language import Source
from graphql.validation.validate import validate_sdl

ROOT = "Customer"  # the type whose objects are the crosswalk's customers, keyed by CUID
LOOKUP_ROOT = "Query"  # where lookups are declared
WRITE_ROOT = "Mutation"  # where writes are declared
CHECKS = ("email", "phone", "nationalId", "date")  # @check(as:): input normalised and checked

# c360's directives, known to the validating parse; only @policy reaches the exported SDL.
DIRECTIVES_SDL = """
directive @policy(name: String!) on FIELD_DEFINITION
directive @public on FIELD_DEFINITION
directive @from(path: String!) on FIELD_DEFINITION
directive @list(limit: String, orderBy: String, descending: Boolean, filters: [String!])
  on FIELD_DEFINITION
directive @derive(from: String!, op: String!, of: String, where: String, round: Int)
  on FIELD_DEFINITION
directive @code(values: [String!]!) on ENUM_VALUE
directive @lookup(by: String!, field: String) on FIELD_DEFINITION
directive @members(path: String!) on ARGUMENT_DEFINITION
directive @facts(owner: String, consents: String) on OBJECT
directive @version on FIELD_DEFINITION
directive @erase(actions: [String!]!) on OBJECT
directive @write(action: String!, customer: String!, policy: String, version: String)
  on FIELD_DEFINITION
directive @edits(field: String!) on INPUT_FIELD_DEFINITION
directive @check(as: String!) on INPUT_FIELD_DEFINITION | ARGUMENT_DEFINITION | FIELD_DEFINITION
directive @merge(rule: MergeRule!, by: String, path: String) repeatable
  on FIELD_DEFINITION | OBJECT
enum MergeRule { PRIMARY LATEST FIRST_NON_EMPTY SUM }
scalar DateTime
scalar Date
type CustomerConnection { edges: [Boolean] }
"""

SCALARS = frozenset({"String", "Int", "Float", "Boolean", "ID", "DateTime", "Date"})
DERIVE_OPS = ("count", "sum", "mean", "min", "max", "latest")
MERGE_RULES = ("PRIMARY", "LATEST", "FIRST_NON_EMPTY", "SUM")
IDENTITY_KEYS = ("email", "phone")  # lookups through the crosswalk's normalised keys
RESERVED = frozenset({"id", "links", "records", "prepared"})  # Customer's own attributes
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class DeclarationError(ValueError):
    """A declaration that cannot be served: `FILE:LINE: message`."""

    def __init__(self, source: str, line: int | None, message: str) -> None:
        self.source, self.line, self.message = source, line, message
        super().__init__(f"{source}:{line}: {message}" if line else f"{source}: {message}")


@dataclass(frozen=True, slots=True)
class TypeRef:
    """A field's or argument's GraphQL type: a named type, maybe in a list, maybe non-null."""

    name: str
    non_null: bool = False
    is_list: bool = False
    item_non_null: bool = False

    def sdl(self) -> str:
        inner = self.name + ("!" if self.is_list and self.item_non_null else "")
        text = f"[{inner}]" if self.is_list else inner
        return text + ("!" if self.non_null else "")


@dataclass(frozen=True, slots=True)
class Argument:
    name: str
    type: TypeRef
    default: Any = None
    members: str | None = None  # @members(path:): a page filter's source of members
    line: int | None = None
    file: str = ""
    check: str | None = None  # @check(as:): how a written value is checked and normalised
    edits: str | None = None  # @edits(field:), on an input field: the Customer field it writes


@dataclass(frozen=True, slots=True)
class ListRule:
    """`@list`: how a list field's arguments shape it."""

    limit: str | None = None  # the argument that caps its length
    order_by: str | None = None  # an item field to sort by
    descending: bool = False
    filters: tuple[str, ...] = ()  # arguments that keep items whose field equals them


@dataclass(frozen=True, slots=True)
class Derivation:
    """`@derive`: a value computed from a bound list field of the same type."""

    source: str  # the list field it reads
    op: str
    of: str | None = None  # the item field it aggregates (not for count)
    where: tuple[str, str] | None = None  # (item field, value) the items must have
    round: int | None = None


@dataclass(frozen=True, slots=True)
class MergeDecl:
    """`@merge`: which value of a person's records in one system the graph serves, when
    the crosswalk links more than one (a duplicate). On a Customer field, for the
    attribute it reads; on `type Customer` with `path: "source.entity"`, for the
    entity's attributes no field decides."""

    rule: str  # one of MERGE_RULES
    by: str | None = None  # LATEST: the record's attribute that orders them
    path: str | None = None  # on the type: the entity
    line: int | None = None
    file: str = ""


@dataclass(frozen=True, slots=True)
class FieldDecl:
    name: str
    type: TypeRef
    line: int | None
    description: str | None = None
    path: str | None = None  # @from: "source.entity[.attribute]" on Customer, else an attribute
    policy: str | None = None
    public: bool = False
    arguments: tuple[Argument, ...] = ()
    list_rule: ListRule | None = None
    derive: Derivation | None = None
    file: str = ""  # the declaration file it is in (a graph may span several)
    version: bool = False  # @version: an opaque token of the bound value, for `ifVersion`
    # @check(as:) on a field: the kind of value it holds (email, phone, …), which the
    # data-quality report checks its values against
    check: str | None = None
    merge: MergeDecl | None = None

    @property
    def attribute(self) -> str:
        """A nested record's attribute that holds this field."""
        return self.path or self.name


@dataclass(frozen=True, slots=True)
class TypeDecl:
    name: str
    fields: tuple[FieldDecl, ...]
    line: int | None
    description: str | None = None
    owner: str | None = None  # @facts(owner:) on the root: source.entity.attribute
    consents: str | None = None  # @facts(consents:): a root field of consent records
    file: str = ""
    erase: tuple[str, ...] = ()  # @erase(actions:) on the root: "source.action" per system
    merges: tuple[MergeDecl, ...] = ()  # @merge(path:, rule:) on the root, per entity

    def field(self, name: str) -> FieldDecl | None:
        return next((f for f in self.fields if f.name == name), None)


@dataclass(frozen=True, slots=True)
class EnumDecl:
    name: str
    values: tuple[str, ...]
    codes: Mapping[str, str]  # a system's code -> the value's name (besides the names)
    line: int | None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class Lookup:
    """A root field finding one customer by a key: `email`/`phone` through the
    crosswalk's normalised keys, or a system's own id (`by` names the system)."""

    name: str
    by: str
    argument: Argument
    guard_field: str | None  # the Customer field whose read the caller needs
    line: int | None
    description: str | None = None
    file: str = ""


@dataclass(frozen=True, slots=True)
class InputDecl:
    """An input type of a write: its fields, each maybe tied to the Customer field it
    changes (whose policy decides the edit) and checked as a kind of value."""

    name: str
    fields: tuple[Argument, ...]
    line: int | None
    description: str | None = None
    file: str = ""


@dataclass(frozen=True, slots=True)
class WriteDecl:
    """A mutation routed to the system that owns what it changes (`@write`)."""

    name: str
    type: TypeRef  # what it answers: Customer, or a record type built from the system's answer
    arguments: tuple[Argument, ...]
    source: str
    action: str  # the source's configured write
    customer: str  # the argument holding the customer's CUID
    policy: str | None  # decided with verb edit for the mutation as a whole
    version: str | None  # the argument holding the version the caller read (`ifVersion`)
    line: int | None
    description: str | None = None
    file: str = ""


@dataclass(frozen=True)
class Declaration:
    source: str
    types: Mapping[str, TypeDecl]  # ROOT first, then in file order
    enums: Mapping[str, EnumDecl]
    lookups: tuple[Lookup, ...] = ()
    page_filters: tuple[Argument, ...] = ()  # extra arguments of `customers`
    customers_description: str | None = None
    inputs: Mapping[str, InputDecl] = field(default_factory=dict)
    writes: tuple[WriteDecl, ...] = ()
    text: str = field(default="", repr=False)
    files: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # (text, name)

    @property
    def root(self) -> TypeDecl:
        return self.types[ROOT]

    def policies(self) -> dict[str, str]:
        """`Type.field` -> policy name, for every field that names one."""
        return {
            f"{t.name}.{f.name}": f.policy
            for t in self.types.values()
            for f in t.fields
            if f.policy
        }


def _type_ref(node: TypeNode) -> TypeRef:
    non_null = isinstance(node, NonNullTypeNode)
    inner = node.type if isinstance(node, NonNullTypeNode) else node
    if isinstance(inner, ListTypeNode):
        item = inner.type
        item_non_null = isinstance(item, NonNullTypeNode)
        named = item.type if isinstance(item, NonNullTypeNode) else item
        if not isinstance(named, NamedTypeNode):
            raise ValueError("lists of lists are not supported")
        return TypeRef(named.name.value, non_null, True, item_non_null)
    assert isinstance(inner, NamedTypeNode)
    return TypeRef(inner.name.value, non_null)


def _args(node: DirectiveNode) -> dict[str, Any]:
    return {arg.name.value: value_from_ast_untyped(arg.value) for arg in node.arguments or ()}


def _directives(node: Any) -> dict[str, dict[str, Any]]:
    return {d.name.value: _args(d) for d in node.directives or ()}


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source  # where nodes without a location come from

    def file(self, node: Any) -> str:
        loc = getattr(node, "loc", None)
        return str(loc.source.name) if loc is not None else self.source

    def line(self, node: Any) -> int | None:
        """The line a definition's name is on (not its description's)."""
        name = getattr(node, "name", None)
        loc = getattr(name, "loc", None) or getattr(node, "loc", None)
        if loc is None:
            return None
        return int(loc.source.get_location(loc.start).line)

    def error(self, node: Any, message: str) -> DeclarationError:
        return DeclarationError(self.file(node), self.line(node), message)

    def merges(self, node: Any) -> tuple[MergeDecl, ...]:
        """Every `@merge` on a node (repeatable on a type: one per entity)."""
        return tuple(
            MergeDecl(
                rule=str(found["rule"]),
                by=found.get("by"),
                path=found.get("path"),
                line=self.line(d) or self.line(node),
                file=self.file(node),
            )
            for d in node.directives or ()
            if d.name.value == "merge" and (found := _args(d))
        )

    def check_as(self, node: Any, found: dict[str, dict[str, Any]]) -> str | None:
        """`@check(as:)`: one of CHECKS, on an input, an argument or a field."""
        check = found.get("check", {}).get("as")
        if check is not None and check not in CHECKS:
            raise self.error(node, f"@check(as:) is one of {', '.join(CHECKS)}")
        return check

    def argument(self, node: InputValueDefinitionNode) -> Argument:
        default = value_from_ast_untyped(node.default_value) if node.default_value else None
        found = _directives(node)
        if keyword.iskeyword(node.name.value) or node.name.value.startswith("__"):
            raise self.error(node, f"argument '{node.name.value}': this name is reserved")
        check = self.check_as(node, found)
        return Argument(
            node.name.value,
            _type_ref(node.type),
            default,
            found.get("members", {}).get("path"),
            self.line(node),
            self.file(node),
            check,
            found.get("edits", {}).get("field"),
        )

    def field(self, node: FieldDefinitionNode) -> FieldDecl:
        found = _directives(node)
        rule = found.get("list")
        derive = found.get("derive")
        derivation = None
        if derive is not None:
            where = None
            if derive.get("where"):
                left, sep, right = str(derive["where"]).partition("=")
                if not sep or not left.strip() or not right.strip():
                    raise self.error(node, "@derive(where:) reads 'field = VALUE'")
                where = (left.strip(), right.strip())
            op = str(derive["op"]).lower()
            if op not in DERIVE_OPS:
                raise self.error(node, f"@derive(op:) is one of {', '.join(DERIVE_OPS)}")
            derivation = Derivation(
                derive["from"], op, derive.get("of"), where, derive.get("round")
            )
        try:
            type_ref = _type_ref(node.type)
        except ValueError as error:
            raise self.error(node, str(error)) from None
        check = self.check_as(node, found)
        return FieldDecl(
            name=node.name.value,
            type=type_ref,
            line=self.line(node),
            description=node.description.value if node.description else None,
            path=found.get("from", {}).get("path"),
            policy=found.get("policy", {}).get("name"),
            public="public" in found,
            arguments=tuple(self.argument(a) for a in node.arguments or ()),
            list_rule=None
            if rule is None
            else ListRule(
                limit=rule.get("limit"),
                order_by=rule.get("orderBy"),
                descending=bool(rule.get("descending")),
                filters=tuple(rule.get("filters") or ()),
            ),
            derive=derivation,
            file=self.file(node),
            version="version" in found,
            merge=self.merge(node),
            check=check,
        )

    def merge(self, node: FieldDefinitionNode) -> MergeDecl | None:
        merges = self.merges(node)
        if len(merges) > 1:
            raise self.error(node, f"{node.name.value}: one @merge per field")
        return merges[0] if merges else None


def parse_declaration(text: str, source: str = "graph.graphql") -> Declaration:
    """Read and check a declaration. Raises DeclarationError naming the file and line."""
    return parse_declarations([(text, source)])


def parse_declarations(files: Sequence[tuple[str, str]]) -> Declaration:
    """Read and check a graph declared over several files (text, name): a department may
    keep its own, adding its fields with `extend type Customer { ... }` and its lookups
    with `extend type Query { ... }`. Errors name the file and line at fault."""
    documents = []
    for text, source in files:
        try:
            documents.append(parse(Source(text, source)))
        except GraphQLError as error:
            line = error.locations[0].line if error.locations else None
            raise DeclarationError(source, line, error.message) from None
    source = ", ".join(name for _, name in files)
    reader = _Reader(source)
    definitions = [d for document in documents for d in document.definitions]
    _validate_sdl(definitions, reader)
    types: dict[str, TypeDecl] = {}
    enums: dict[str, EnumDecl] = {}
    lookups: list[Lookup] = []
    page_filters: list[Argument] = []
    customers_description = None
    extensions: list[ObjectTypeExtensionNode] = []
    inputs: dict[str, InputDecl] = {}
    writes: list[WriteDecl] = []
    for definition in definitions:
        if isinstance(definition, InputObjectTypeDefinitionNode):
            inputs[definition.name.value] = InputDecl(
                name=definition.name.value,
                fields=tuple(reader.argument(f) for f in definition.fields or ()),
                line=reader.line(definition),
                description=definition.description.value if definition.description else None,
                file=reader.file(definition),
            )
            continue
        if isinstance(definition, ObjectTypeDefinitionNode | ObjectTypeExtensionNode):
            name = definition.name.value
            if name == WRITE_ROOT:
                writes.extend(_write(reader, node) for node in definition.fields or ())
                continue
            if name == LOOKUP_ROOT:
                for node in definition.fields or ():
                    lookups_or_filters = _query_field(reader, node)
                    if isinstance(lookups_or_filters, Lookup):
                        lookups.append(lookups_or_filters)
                    else:
                        page_filters.extend(lookups_or_filters)
                        if node.description:
                            customers_description = node.description.value
                continue
            if isinstance(definition, ObjectTypeExtensionNode):
                extensions.append(definition)
                continue
            facts = _directives(definition).get("facts", {})
            erase = tuple(_directives(definition).get("erase", {}).get("actions", ()))
            if any(str(a).count(".") != 1 for a in erase):
                raise reader.error(definition, "@erase(actions:) lists 'source.action' names")
            if len({str(a).split(".")[0] for a in erase}) != len(erase):
                raise reader.error(definition, "@erase(actions:): one action per system")
            types[name] = TypeDecl(
                name=name,
                fields=tuple(reader.field(node) for node in definition.fields or ()),
                line=reader.line(definition),
                description=definition.description.value if definition.description else None,
                owner=facts.get("owner"),
                consents=facts.get("consents"),
                file=reader.file(definition),
                erase=tuple(str(a) for a in erase),
                merges=reader.merges(definition),
            )
        elif isinstance(definition, EnumTypeDefinitionNode):
            codes: dict[str, str] = {}
            for value in definition.values or ():
                for code in _directives(value).get("code", {}).get("values", ()):
                    if code in codes and codes[code] != value.name.value:
                        raise reader.error(value, f"code '{code}' maps to two values")
                    codes[str(code)] = value.name.value
            enums[definition.name.value] = EnumDecl(
                name=definition.name.value,
                values=tuple(v.name.value for v in definition.values or ()),
                codes=codes,
                line=reader.line(definition),
                description=definition.description.value if definition.description else None,
            )
        else:
            raise reader.error(
                definition, "only object, input and enum types, Query and Mutation are declared"
            )
    for extension in extensions:  # validation saw the extended type declared
        base = types[extension.name.value]
        if _directives(extension).get("facts"):
            raise reader.error(extension, "@facts belongs on the type's own declaration")
        added = tuple(reader.field(node) for node in extension.fields or ())
        types[base.name] = dataclasses.replace(
            base, fields=base.fields + added, merges=base.merges + reader.merges(extension)
        )
    if ROOT not in types:
        raise DeclarationError(source, None, f"no 'type {ROOT}' declared")
    ordered = {ROOT: types[ROOT], **{k: v for k, v in types.items() if k != ROOT}}
    declaration = Declaration(
        source,
        ordered,
        enums,
        tuple(lookups),
        tuple(page_filters),
        customers_description,
        inputs,
        tuple(writes),
        text="\n".join(text for text, _ in files),
        files=tuple(files),
    )
    _check(declaration)
    return declaration


def _write(reader: _Reader, node: FieldDefinitionNode) -> WriteDecl:
    """A declared Mutation field: which system's write it is, and for which customer."""
    found = _directives(node).get("write")
    name = node.name.value
    if found is None:
        raise reader.error(node, f"Mutation.{name}: declare its system with @write(action:)")
    action = str(found["action"])
    if action.count(".") != 1:
        raise reader.error(node, f"Mutation.{name}: @write(action:) reads 'source.action'")
    source, action_name = action.split(".")
    arguments = tuple(reader.argument(a) for a in node.arguments or ())
    names = {a.name: a for a in arguments}
    customer = str(found["customer"])
    if (
        customer not in names
        or names[customer].type.name != "ID"
        or not names[customer].type.non_null
    ):
        raise reader.error(node, f"Mutation.{name}: @write(customer:) names an ID! argument")
    version = found.get("version")
    if version is not None and (version not in names or names[version].type.name != "String"):
        raise reader.error(node, f"Mutation.{name}: @write(version:) names a String argument")
    return WriteDecl(
        name=name,
        type=_type_ref(node.type),
        arguments=arguments,
        source=source,
        action=action_name,
        customer=customer,
        policy=found.get("policy"),
        version=version,
        line=reader.line(node),
        description=node.description.value if node.description else None,
        file=reader.file(node),
    )


def _query_field(reader: _Reader, node: FieldDefinitionNode) -> Lookup | list[Argument]:
    """A declared Query field: a lookup (`@lookup`), or `customers` with page filters."""
    found = _directives(node)
    name = node.name.value
    if name == "customers":
        filters = [reader.argument(a) for a in node.arguments or ()]
        for argument in filters:
            if argument.members is None:
                raise reader.error(node, f"customers({argument.name}:) needs @members(path:)")
            if argument.name in ("first", "after"):
                raise reader.error(node, f"customers({argument.name}:) is the core's own")
        return filters
    lookup = found.get("lookup")
    if lookup is None:
        raise reader.error(node, f"Query.{name}: declare a lookup with @lookup(by:)")
    arguments = [reader.argument(a) for a in node.arguments or ()]
    if len(arguments) != 1 or not arguments[0].type.non_null or arguments[0].type.is_list:
        raise reader.error(node, f"Query.{name}: a lookup takes exactly one non-null key")
    if arguments[0].type.name not in ("String", "ID"):
        raise reader.error(node, f"Query.{name}: a lookup's key is a String or an ID")
    result = _type_ref(node.type)
    if result.name != ROOT or result.is_list or result.non_null:
        raise reader.error(node, f"Query.{name}: a lookup answers a nullable {ROOT}")
    return Lookup(
        name=name,
        by=str(lookup["by"]),
        argument=arguments[0],
        guard_field=lookup.get("field"),
        line=reader.line(node),
        description=node.description.value if node.description else None,
        file=reader.file(node),
    )


def _validate_sdl(definitions: list[Any], reader: _Reader) -> None:
    """graphql-core's own SDL validation (known types, directive arguments, duplicates,
    extensions of declared types), with the directive definitions and a stand-in root
    prepended; each error names its own file and line."""
    prelude = DIRECTIVES_SDL
    has_query = any(
        isinstance(d, ObjectTypeDefinitionNode) and d.name.value == LOOKUP_ROOT for d in definitions
    )
    if not has_query:
        prelude += "type Query { _c360: Boolean }\n"
    document = DocumentNode(
        definitions=(*parse(Source(prelude, "<c360>")).definitions, *definitions)
    )
    errors = validate_sdl(document)
    if errors:
        error = errors[0]
        loc = next((n.loc for n in error.nodes or () if n.loc is not None), None)
        if loc is None or loc.source.name == "<c360>":
            raise DeclarationError(reader.source, None, error.message)
        location = loc.source.get_location(loc.start)
        raise DeclarationError(loc.source.name, location.line, error.message)


def _check(declaration: Declaration) -> None:
    """c360's own rules, beyond what graphql-core validates."""
    source = declaration.source
    known = SCALARS | set(declaration.types) | set(declaration.enums)
    for type_decl in declaration.types.values():
        is_root = type_decl.name == ROOT
        for f in type_decl.fields:
            where = f"{type_decl.name}.{f.name}"

            def fail(message: str, f: FieldDecl = f, where: str = where) -> DeclarationError:
                return DeclarationError(f.file or source, f.line, f"{where}: {message}")

            if f.type.name not in known:
                raise fail(f"unknown type {f.type.name}")
            if is_root and f.name == "id":
                if f.type.sdl() != "ID!" or f.path or f.policy:
                    raise fail("the customer's id is the CUID: declare it as 'id: ID!' or not")
                continue
            if (
                not _NAME.match(f.name)
                or keyword.iskeyword(f.name)
                or f.name.startswith("__")
                or (is_root and f.name in RESERVED)
            ):
                raise fail("this name is reserved (a Python keyword or one of Customer's own)")
            if f.type.name == ROOT:
                raise fail(f"a field of type {ROOT} is not supported")
            if is_root:
                if f.derive is None and f.path is None:
                    raise fail(
                        'declare where it comes from: @from(path: "source.entity[.attribute]")'
                    )
                if f.derive is not None and f.path is not None:
                    raise fail("@derive and @from exclude each other")
                if f.path is not None and f.path.count(".") not in (1, 2):
                    raise fail("@from(path:) on Customer reads 'source.entity[.attribute]'")
                if f.policy is None and not f.public:
                    raise fail(
                        "carries personal data unless said otherwise: add @policy(name:) or @public"
                    )
            elif f.path is not None and "." in f.path:
                raise fail("@from(path:) inside a nested type names the record's attribute")
            elif f.policy is not None or f.arguments or f.derive is not None:
                raise fail(
                    "nested fields are covered by their parent's policy; no arguments or @derive"
                )
            if f.list_rule is not None or f.arguments:
                _check_list(declaration, type_decl, f, fail)
            if f.derive is not None:
                _check_derive(declaration, type_decl, f, fail)
    if declaration.root.consents is not None:
        consents = declaration.root.field(declaration.root.consents)
        item = declaration.types.get(consents.type.name) if consents else None
        if consents is None or not consents.type.is_list or item is None:
            raise DeclarationError(
                declaration.root.file or source,
                declaration.root.line,
                "@facts(consents:) names a list field of records",
            )
        for needed in ("channel", "granted"):
            if item.field(needed) is None:
                raise DeclarationError(
                    item.file or source,
                    item.line,
                    f"{item.name}: consent records need a '{needed}' field",
                )
    _check_writes(declaration)
    _check_merges(declaration)
    names = {f.name for f in declaration.root.fields}
    for lookup in declaration.lookups:
        if lookup.guard_field is not None and lookup.guard_field not in names:
            raise DeclarationError(
                lookup.file or source,
                lookup.line,
                f"Query.{lookup.name}: no Customer field '{lookup.guard_field}'",
            )
        if lookup.by in IDENTITY_KEYS and lookup.guard_field is None:
            raise DeclarationError(
                lookup.file or source,
                lookup.line,
                f"Query.{lookup.name}: name the Customer field holding the {lookup.by} "
                "(@lookup(field:)): only a caller who may read it may look it up",
            )


def _check_writes(declaration: Declaration) -> None:
    root = declaration.root
    for f in root.fields:
        if f.version and (f.type.name != "String" or f.type.is_list or f.path is None):
            raise DeclarationError(
                f.file or declaration.source,
                f.line,
                f"{root.name}.{f.name}: @version belongs on a String bound with @from",
            )
    for write in declaration.writes:

        def fail(message: str, write: WriteDecl = write) -> DeclarationError:
            where = f"Mutation.{write.name}"
            return DeclarationError(
                write.file or declaration.source, write.line, f"{where}: {message}"
            )

        if write.type.is_list or write.type.non_null:
            raise fail("a write answers one nullable object (null when it fails)")
        if write.type.name != ROOT and write.type.name not in declaration.types:
            raise fail(f"answers {write.type.name}: Customer or a declared record type")
        for argument in write.arguments:
            if argument.name in (write.customer, write.version):
                continue
            item = declaration.inputs.get(argument.type.name)
            if item is None:
                if write.policy is None:
                    raise fail(f"argument '{argument.name}' needs @write(policy:) to decide it")
                continue
            for input_field in item.fields:
                if input_field.edits is None:
                    if write.policy is None:
                        raise fail(
                            f"{item.name}.{input_field.name} needs @edits(field:) or "
                            "@write(policy:) to decide it"
                        )
                    continue
                edited = root.field(input_field.edits)
                if edited is None or edited.policy is None:
                    raise fail(
                        f"{item.name}.{input_field.name}: @edits(field:) names a Customer field "
                        "with a @policy"
                    )


def _check_merges(declaration: Declaration) -> None:
    """`@merge` rules: where each may stand, and one rule per attribute."""
    root = declaration.root
    # "source.entity.attribute" -> its rule; a write's version is the primary record's
    decided: dict[str, tuple[str, str | None]] = {
        f.path: ("PRIMARY", None) for f in root.fields if f.version and f.path
    }
    for type_decl in declaration.types.values():
        for f in type_decl.fields:
            merge = f.merge
            if merge is None:
                continue
            where = f"{type_decl.name}.{f.name}: @merge"

            def fail(message: str, f: FieldDecl = f, where: str = where) -> DeclarationError:
                return DeclarationError(f.file or declaration.source, f.line, f"{where}{message}")

            _check_rule(merge, fail)
            if type_decl is not root:
                raise fail(" belongs on a Customer field or on type Customer")
            if merge.path is not None:
                raise fail("(path:) belongs on type Customer; a field's rule is its own")
            if f.derive is not None:
                raise fail(": a derived value is computed over every record's items")
            if f.path is None or f.path.count(".") != 2:
                raise fail(
                    ": a list of records of a one-to-many entity holds every record's items; "
                    "a rule chooses one value, of a field bound to 'source.entity.attribute'"
                )
            if f.version:
                raise fail(": a @version is the primary record's, the one writes go to")
            if merge.rule == "SUM" and (f.type.is_list or f.type.name not in ("Int", "Float")):
                raise fail("(rule: SUM) adds numbers: an Int or a Float")
            rule: tuple[str, str | None] = (merge.rule, merge.by)
            if decided.setdefault(f.path, rule) != rule:
                raise fail(f": another field reads {f.path} with another rule")
    entities: set[str] = set()
    for merge in root.merges:

        def fail_type(message: str, merge: MergeDecl = merge) -> DeclarationError:
            return DeclarationError(
                merge.file or declaration.source, merge.line, f"{root.name} @merge{message}"
            )

        _check_rule(merge, fail_type)
        if merge.path is None or merge.path.count(".") != 1:
            raise fail_type("(path:) names the entity: 'source.entity'")
        if merge.rule == "SUM":
            raise fail_type("(rule: SUM) adds numbers: declare it on a field")
        if merge.path in entities:
            raise fail_type(f": one rule per entity, and {merge.path} has two")
        entities.add(merge.path)
        for f in root.fields:
            if f.path == merge.path and f.type.is_list:
                raise fail_type(
                    f"(path: {merge.path!r}): {f.name} lists its records; a one-to-many "
                    "entity holds every record's items"
                )


def _check_rule(merge: MergeDecl, fail: Any) -> None:
    if merge.rule not in MERGE_RULES:
        raise fail(f"(rule:) is one of {', '.join(MERGE_RULES)}")
    if merge.rule == "LATEST" and not merge.by:
        raise fail("(rule: LATEST) needs by: the record's attribute that orders them")
    if merge.rule != "LATEST" and merge.by is not None:
        raise fail("(by:) orders records for rule: LATEST only")


def _check_list(declaration: Declaration, owner: TypeDecl, f: FieldDecl, fail: Any) -> None:
    if owner.name != ROOT:
        raise fail("only Customer's fields take arguments")
    if not f.type.is_list or f.type.name not in declaration.types:
        raise fail("arguments and @list belong on a list of records")
    item = declaration.types[f.type.name]
    rule = f.list_rule or ListRule()
    arguments = {a.name: a for a in f.arguments}
    if rule.limit is not None:
        limit = arguments.get(rule.limit)
        if limit is None or limit.type.name != "Int":
            raise fail(f"@list(limit:) names an Int argument, not '{rule.limit}'")
    if rule.order_by is not None and item.field(rule.order_by) is None:
        raise fail(f"@list(orderBy:) names a field of {item.name}, not '{rule.order_by}'")
    for name in rule.filters:
        if name not in arguments or item.field(name) is None:
            raise fail(f"@list(filters:) '{name}' must be an argument and a field of {item.name}")
    used = {rule.limit, *rule.filters}
    for name in arguments:
        if name not in used:
            raise fail(f"argument '{name}' is not used by @list(limit:, filters:)")


def _check_derive(declaration: Declaration, owner: TypeDecl, f: FieldDecl, fail: Any) -> None:
    derive = f.derive
    assert derive is not None
    bound = owner.field(derive.source)
    if owner.name != ROOT or bound is None or bound.path is None or not bound.type.is_list:
        raise fail(f"@derive(from:) names a bound list field of {ROOT}, not '{derive.source}'")
    item = declaration.types.get(bound.type.name)
    if item is None:
        raise fail(f"@derive(from:) '{derive.source}' is not a list of records")
    if derive.op != "count":
        of = item.field(derive.of or "")
        if of is None:
            raise fail(f"@derive(of:) names a field of {item.name}")
        numeric = of.type.name in ("Int", "Float")
        if derive.op in ("sum", "mean") and not numeric:
            raise fail(f"@derive(op: {derive.op}) needs a number, {item.name}.{of.name} is not")
        if derive.op in ("sum", "mean") and f.type.name not in ("Int", "Float"):
            raise fail("a sum or mean is an Int or a Float")
    elif f.type.name != "Int":
        raise fail("a count is an Int")
    if derive.where is not None and item.field(derive.where[0]) is None:
        raise fail(f"@derive(where:) names a field of {item.name}")
    if f.type.is_list:
        raise fail("a derived value is one value")


def load_declaration(*paths: str | Path) -> Declaration:
    """Read a declaration from one or more files; DeclarationError names the file (and
    line) at fault."""
    files = []
    for path in paths:
        try:
            files.append((Path(path).read_text(encoding="utf-8"), str(path)))
        except (OSError, UnicodeDecodeError) as error:
            raise DeclarationError(str(path), None, f"cannot read ({error})") from None
    return parse_declarations(files)


def used_types(declaration: Declaration) -> Sequence[str]:
    """Types and enums a field of the graph reaches (the rest would be dead schema)."""
    seen: list[str] = []

    def visit(name: str) -> None:
        if name in seen or name in SCALARS:
            return
        seen.append(name)
        for f in declaration.types[name].fields if name in declaration.types else ():
            visit(f.type.name)
            for argument in f.arguments:
                visit(argument.type.name)

    visit(ROOT)
    return seen
