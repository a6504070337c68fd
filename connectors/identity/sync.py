"""`c360 identity sync`: page through every system's customer keys and link records.

Deterministic (systems in configured order, each system's records in its scan order),
incremental (resumes from the system's own scan cursor: the last id for SQL, the next
page's opaque cursor for an API) and idempotent (a record already linked is never
linked again). Email is the stronger key: a record whose email and phone point at
different customers follows its email and is reported as a conflict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from connectors.base import Connector, IdentityRow, SourceUnavailable
from connectors.identity.keys import IdentityKeys
from connectors.identity.normalize import normalize_email, normalize_phone
from connectors.identity.store import CrosswalkStore, Issue, Link


@dataclass
class SystemSync:
    scanned: int = 0
    linked: int = 0
    new_customers: int = 0
    issues: int = 0
    error: str | None = None  # the system could not be scanned; the others still were


@dataclass
class SyncReport:
    systems: dict[str, SystemSync] = field(default_factory=dict)

    @property
    def linked(self) -> int:
        return sum(stats.linked for stats in self.systems.values())


@dataclass
class _Working:
    """The crosswalk as the sync sees it while it runs."""

    by_email: dict[str, str] = field(default_factory=dict)
    by_phone: dict[str, str] = field(default_factory=dict)
    phones_of: dict[str, set[str]] = field(default_factory=dict)
    systems_of: dict[str, set[str]] = field(default_factory=dict)
    known: set[tuple[str, str]] = field(default_factory=set)

    def add(self, link: Link) -> None:
        self.known.add((link.system, link.system_id))
        self.systems_of.setdefault(link.cuid, set()).add(link.system)
        if link.email_hash:
            self.by_email.setdefault(link.email_hash, link.cuid)
        if link.phone_hash:
            self.by_phone.setdefault(link.phone_hash, link.cuid)
            self.phones_of.setdefault(link.cuid, set()).add(link.phone_hash)


def link_row(
    system: str, row: IdentityRow, keys: IdentityKeys, working: _Working
) -> tuple[Link, list[Issue]]:
    """Decide which customer one record belongs to; pure apart from the working index."""
    email = normalize_email(row.email)
    phone = normalize_phone(row.phone)
    email_hash = keys.match_hash("email", email) if email else None
    phone_hash = keys.match_hash("phone", phone) if phone else None
    by_email = working.by_email.get(email_hash) if email_hash else None
    by_phone = working.by_phone.get(phone_hash) if phone_hash else None
    issues: list[Issue] = []
    cuid = by_email or by_phone
    if cuid is None:
        cuid = keys.cuid(system, row.system_id)
        if email_hash is None and phone_hash is None:
            issues.append(
                Issue(system, row.system_id, "unlinkable", cuid, "no usable email or phone")
            )
    elif (
        by_email
        and phone_hash
        and (
            (by_phone and by_phone != by_email)
            or (working.phones_of.get(by_email) and phone_hash not in working.phones_of[by_email])
        )
    ):
        issues.append(Issue(system, row.system_id, "conflict", cuid, "same email, different phone"))
    is_primary = system not in working.systems_of.get(cuid, set())
    if not is_primary:
        issues.append(Issue(system, row.system_id, "duplicate", cuid, f"a second {system} record"))
    return Link(system, row.system_id, cuid, is_primary, email_hash, phone_hash), issues


async def sync_identity(
    store: CrosswalkStore,
    connectors: Sequence[Connector],
    keys: IdentityKeys,
    *,
    page_size: int = 500,
    full: bool = False,
) -> SyncReport:
    await store.create()
    working = _Working()
    for link in await store.links():
        working.add(link)
    working.known |= await store.tombstoned()  # erased people are not linked again
    cursors = {} if full else await store.cursors()
    report = SyncReport()
    for connector in connectors:
        stats = report.systems.setdefault(connector.name, SystemSync())
        after = cursors.get(connector.name)
        while True:
            try:
                page = await connector.scan(after, page_size)
            except SourceUnavailable as error:
                stats.error = error.reason
                break
            new_links: list[Link] = []
            new_issues: list[Issue] = []
            for row in page.rows:
                stats.scanned += 1
                if (connector.name, row.system_id) in working.known:
                    continue
                link, issues = link_row(connector.name, row, keys, working)
                if link.cuid not in working.systems_of:
                    stats.new_customers += 1
                working.add(link)
                new_links.append(link)
                new_issues.extend(issues)
            # The system's own cursor, never a record id: an opaque cursor is all some
            # systems accept back (a last id would be answered with HTTP 400).
            resume: str | None
            if page.next_cursor is not None:
                resume = page.next_cursor
            elif page.resume_cursor is not None:
                resume = page.resume_cursor
            else:
                resume = after  # the last page is read again next time
            await store.save_page(connector.name, new_links, new_issues, resume)
            stats.linked += len(new_links)
            stats.issues += len(new_issues)
            if page.next_cursor is None:
                break
            after = page.next_cursor
    return report
