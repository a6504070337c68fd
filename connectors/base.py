"""The narrow protocol every department-system connector implements.

A connector knows how to talk to one kind of system (SQL, REST, GraphQL): fetch records
of an entity by a batch of keys, page through the system's customer keys for the
identity sync, report its health, and close. It knows nothing about GraphQL types or
policies.

A connector may also write (`Writable`): the actions its source's `writes` tables
configure, each one call to the system that owns the data. Writes are never retried and
never cached; a system that refuses says so (`WriteRefused`, `WriteConflict`), one that
cannot answer is `SourceUnavailable` as for a read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Record = Mapping[str, Any]
# A fetched value is one record, or a list of records for a one-to-many entity.
Fetched = Record | list[Record]


class SourceUnavailable(Exception):
    """A department system failed, timed out or answered something unusable.

    The message is for operators (the gateway's log); clients only see the source name.
    """

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class ConnectorConfigError(ValueError):
    """A connector's settings are unusable; the message names the offending key."""


class WriteRefused(Exception):
    """The system answered and refused the write: its own validation, a 4xx (`status`;
    404 when the record does not exist), GraphQL errors, a constraint of the database.
    Nothing was written. The reason is for operators (it may quote the system's message);
    clients only learn the source's name."""

    def __init__(self, source: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason
        self.status = status


class WriteConflict(Exception):
    """The record changed under the write: a 409 or 412, or a conditional statement that
    matched nothing although the record exists (its version moved on). Nothing was
    written."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class WriteValueError(ValueError):
    """The values do not fit the action (a name it does not take, one it requires that is
    missing, a value not of its declared type); raised before the system is asked."""


class NoSuchWrite(LookupError):
    """The source has no write action of that name (or cannot write at all)."""


@dataclass(frozen=True, slots=True)
class EntitySpec:
    """How one entity of a system is keyed: which attribute of a returned record
    holds the key the gateway asked for, and whether a key maps to many records."""

    name: str
    key_field: str
    many: bool = False


@dataclass(frozen=True, slots=True)
class IdentityRow:
    """One customer record as the identity sync sees it: the system's id and raw match keys."""

    system_id: str
    email: str | None = None
    phone: str | None = None


@dataclass(frozen=True, slots=True)
class IdentityFields:
    """Which attributes of a system's customer record hold its id, email and phone
    (`id_field`, `email_field`, `phone_field` in a `scan` table)."""

    id: str = "id"
    email: str = "email"
    phone: str = "phone"

    def row(self, record: Record) -> IdentityRow:
        return IdentityRow(
            system_id=str(record[self.id]),
            email=record.get(self.email),
            phone=record.get(self.phone),
        )


IDENTITY_FIELD_KEYS = {"id_field", "email_field", "phone_field"}


@dataclass(frozen=True, slots=True)
class IdentityPage:
    """One page of a scan. `next_cursor` is the system's own cursor of the next page (None
    on the last page); the identity sync stores it to resume from. On the last page,
    `resume_cursor` says where a later sync resumes to see records added since: the last
    id for a scan keyed by it (SQL); None resumes from the cursor that fetched this page,
    which suits an opaque cursor (the page is read again, its known records skipped)."""

    rows: list[IdentityRow]
    next_cursor: str | None = None
    resume_cursor: str | None = None


@dataclass(slots=True)
class Health:
    ok: bool
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WriteSpec:
    """One configured write (`[sources.X.writes.<name>]`): the values it takes by name,
    and those it cannot do without (a path placeholder, a non-null GraphQL variable, the
    `key` of a SQL statement). A value the action takes but is not given is left out
    (REST body), null (GraphQL) or NULL (SQL, so `COALESCE(:email, email)` keeps the
    column's own)."""

    name: str
    params: frozenset[str]
    required: frozenset[str] = frozenset()

    def check(self, source: str, values: Mapping[str, Any]) -> None:
        unknown = sorted(set(values) - self.params)
        if unknown:
            raise WriteValueError(
                f"sources.{source}.writes.{self.name}: takes no value '{unknown[0]}' "
                f"(takes: {', '.join(sorted(self.params)) or 'none'})"
            )
        missing = sorted(name for name in self.required if values.get(name) is None)
        if missing:
            raise WriteValueError(
                f"sources.{source}.writes.{self.name}: needs a value for '{missing[0]}'"
            )


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a system said to a write it accepted: how many records it changed (1 for a
    REST or GraphQL call it accepted; a SQL statement's row count) and the record as the
    system holds it now, when the write returned or read it back (None otherwise)."""

    affected: int
    record: Record | None = None


@runtime_checkable
class Connector(Protocol):
    """What the gateway needs from a department system."""

    name: str

    def entities(self) -> Mapping[str, EntitySpec]: ...

    async def fetch(self, entity: str, keys: Sequence[str]) -> dict[str, Fetched]:
        """Records for the keys that exist; absent keys are simply missing from the result.

        Raises SourceUnavailable when the system cannot answer.
        """
        ...

    async def scan(self, after: str | None, limit: int) -> IdentityPage:
        """One page of (system id, email, phone), ordered, for the identity sync."""
        ...

    async def health(self) -> Health: ...

    async def close(self) -> None: ...


@runtime_checkable
class Writable(Protocol):
    """A connector that can write: the built-in SQL, REST and GraphQL ones, whose
    `actions()` is empty unless the source configures `writes`. Kept apart from
    `Connector`, so a connector that only reads implements nothing more."""

    name: str

    def actions(self) -> Mapping[str, WriteSpec]: ...

    async def write(self, action: str, values: Mapping[str, Any]) -> WriteResult:
        """Ask the system to do one configured write, once (no retry, no cache).

        Raises WriteValueError (nothing sent), WriteRefused, WriteConflict, or
        SourceUnavailable when the system is down, times out or fails (5xx): the write
        may then have happened or not, and the reason says which is known.
        """
        ...


def write_spec(source: str, actions: Mapping[str, WriteSpec], action: str) -> WriteSpec:
    """The action's spec, or NoSuchWrite naming what the source does configure."""
    spec = actions.get(action)
    if spec is None:
        configured = ", ".join(sorted(actions)) or "none"
        raise NoSuchWrite(
            f"sources.{source}.writes.{action}: not configured (configured: {configured})"
        )
    return spec


def group_records(
    records: Sequence[Record], spec: EntitySpec, wanted: Sequence[str]
) -> dict[str, Fetched]:
    """Index the records a system returned by the entity's key field.

    Keys are compared as strings, because each system has its own id types and the
    gateway treats all ids as opaque strings.
    """
    wanted_set = set(wanted)
    if spec.many:
        many: dict[str, list[Record]] = {key: [] for key in wanted}
        for record in records:
            key = str(record.get(spec.key_field))
            if key in wanted_set:
                many[key].append(record)
        return dict(many)
    one: dict[str, Fetched] = {}
    for record in records:
        key = str(record.get(spec.key_field))
        if key in wanted_set:
            one[key] = record
    return one


def dig(payload: Any, path: str) -> Any:
    """Follow a dotted path ("data.contacts") into decoded JSON; None where it ends."""
    current = payload
    for part in path.split(".") if path else ():
        if not isinstance(current, dict):  # decoded JSON: dict, not any Mapping (faster)
            return None
        current = current.get(part)
    return current
