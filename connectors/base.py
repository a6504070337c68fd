"""The narrow protocol every department-system connector implements.

A connector knows how to talk to one kind of system (SQL, REST, GraphQL): fetch records
of an entity by a batch of keys, page through the system's customer keys for the
identity sync, report its health, and close. It knows nothing about GraphQL types or
policies.
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
