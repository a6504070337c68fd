"""The crosswalk held in memory for query time: one dictionary lookup gives every
system's key for a customer, so all systems can be asked at once."""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from connectors.identity.keys import IdentityKeys
from connectors.identity.normalize import normalize_email, normalize_phone
from connectors.identity.store import Link


def page_after(ordered: Sequence[str], after: str | None, first: int) -> tuple[list[str], bool]:
    """Up to `first` ids of a sorted sequence after the cursor, and whether more follow."""
    start = 0 if after is None else bisect.bisect_right(ordered, after)
    return list(ordered[start : start + first]), start + first < len(ordered)


@dataclass(frozen=True, slots=True)
class IdentityIndex:
    systems: Mapping[str, Mapping[str, str]]  # cuid -> system -> primary system id
    ordered: tuple[str, ...]  # every cuid, sorted: the order of `customers`
    by_email: Mapping[str, str]  # email hash -> cuid
    by_record: Mapping[tuple[str, str], str]  # (system, system id) -> cuid
    keys: IdentityKeys
    by_phone: Mapping[str, str] = field(default_factory=dict)  # phone hash -> cuid
    # Systems with at least one linked record: a system missing here was never synced
    # (down at the sync), so an absent key says nothing about its records.
    linked_systems: frozenset[str] = frozenset()
    restricted: frozenset[str] = frozenset()  # CUIDs of people who restricted processing

    @classmethod
    def build(
        cls, links: Iterable[Link], keys: IdentityKeys, restricted: frozenset[str] = frozenset()
    ) -> IdentityIndex:
        systems: dict[str, dict[str, str]] = {}
        by_email: dict[str, str] = {}
        by_record: dict[tuple[str, str], str] = {}
        by_phone: dict[str, str] = {}
        for link in links:
            by_record[(link.system, link.system_id)] = link.cuid
            entry = systems.setdefault(link.cuid, {})
            if link.is_primary:
                entry[link.system] = link.system_id
            if link.email_hash:
                by_email.setdefault(link.email_hash, link.cuid)
            if link.phone_hash:
                by_phone.setdefault(link.phone_hash, link.cuid)
        linked = frozenset(system for system, _ in by_record)
        return cls(
            systems, tuple(sorted(systems)), by_email, by_record, keys, by_phone, linked, restricted
        )

    def rekeyed(self, before: Link, after: Link) -> IdentityIndex:
        """This index with one record's match keys changed (a write to its email or
        phone), without reading the whole crosswalk again: a key that found this record's
        customer through it finds it no longer, the new one does unless another customer
        holds it (the sync's rule: the first link of a key keeps it)."""
        by_email, by_phone = dict(self.by_email), dict(self.by_phone)
        for index, old, new in (
            (by_email, before.email_hash, after.email_hash),
            (by_phone, before.phone_hash, after.phone_hash),
        ):
            if old == new:
                continue
            if old is not None and index.get(old) == before.cuid:
                del index[old]
            if new is not None:
                index.setdefault(new, after.cuid)
        return dataclasses.replace(self, by_email=by_email, by_phone=by_phone)

    def links(self, cuid: str) -> Mapping[str, str] | None:
        return self.systems.get(cuid)

    def find_email(self, email: str) -> str | None:
        normalized = normalize_email(email)
        if normalized is None:
            return None
        return self.by_email.get(self.keys.match_hash("email", normalized))

    def find_phone(self, phone: str) -> str | None:
        normalized = normalize_phone(phone)
        if normalized is None:
            return None
        return self.by_phone.get(self.keys.match_hash("phone", normalized))

    def page(self, after: str | None, first: int) -> tuple[list[str], bool]:
        return page_after(self.ordered, after, first)

    def __len__(self) -> int:
        return len(self.ordered)
