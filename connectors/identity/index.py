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


def id_order(system_id: str) -> tuple[int, str]:
    """The order of a person's records in one system: deterministic for any id, and
    numeric order for numeric ids (a SQL system's scan order, in which the sync linked
    them)."""
    return (len(system_id), system_id)


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
    # cuid -> system -> the ids of the person's other records there (duplicates), for the
    # few customers who have any: a load looks a customer up here once and reads every
    # record of theirs; a customer without duplicates is absent.
    duplicates: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)

    @classmethod
    def build(
        cls, links: Iterable[Link], keys: IdentityKeys, restricted: frozenset[str] = frozenset()
    ) -> IdentityIndex:
        systems: dict[str, dict[str, str]] = {}
        by_email: dict[str, str] = {}
        by_record: dict[tuple[str, str], str] = {}
        by_phone: dict[str, str] = {}
        others: dict[str, dict[str, list[str]]] = {}
        for link in links:
            by_record[(link.system, link.system_id)] = link.cuid
            entry = systems.setdefault(link.cuid, {})
            if link.is_primary:
                entry[link.system] = link.system_id
            else:
                others.setdefault(link.cuid, {}).setdefault(link.system, []).append(link.system_id)
            if link.email_hash:
                by_email.setdefault(link.email_hash, link.cuid)
            if link.phone_hash:
                by_phone.setdefault(link.phone_hash, link.cuid)
        linked = frozenset(system for system, _ in by_record)
        # A non-primary record of a system with no primary for the person (the sync never
        # makes one) stays out of reads: a merge starts from the primary record.
        duplicates: dict[str, dict[str, tuple[str, ...]]] = {}
        for cuid, by_system in others.items():
            kept = {
                system: tuple(sorted(ids, key=id_order))
                for system, ids in by_system.items()
                if system in systems[cuid]
            }
            if kept:
                duplicates[cuid] = kept
        return cls(
            systems,
            tuple(sorted(systems)),
            by_email,
            by_record,
            keys,
            by_phone,
            linked,
            restricted,
            duplicates,
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
        """Each system's primary id for the customer (the record writes go to)."""
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
