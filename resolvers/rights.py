"""A person's rights (PIPL arts. 44-47, GDPR arts. 15-17 and 20), answered from the graph.

The crosswalk knows which records are the person's (every record of every system, not
only the one the graph reads), the declaration where each field lives, the access log who
read or changed what. `subjectReport` gathers all three for the `privacy` role acting for
`rights`; `subjectErase` routes a deletion to every system whose erase the declaration
names (`type Customer @erase(actions: [...])`), unlinks the person (a tombstone keeps a
later sync from linking the same records again), purges the cache and lists the systems
left for manual follow-up. Both are recorded in the access log like any request.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import strawberry
from strawberry.types import Info

from connectors.base import SourceUnavailable, WriteConflict, WriteRefused, WriteValueError
from connectors.identity.keys import is_cuid
from resolvers.audit import AuditQuery
from resolvers.context import GraphContext
from resolvers.guard import policy_field
from resolvers.types import user_error

REPORT_POLICY = "rights.report"
ERASE_POLICY = "rights.erase"
RESTRICT_POLICY = "rights.restrict"
MAX_ACCESSES = 500


@strawberry.type(description="One value a system holds about the person, as it holds it.")
class HeldValue:
    name: str
    value: str | None


@strawberry.type(description="One record of one system: where it is and what it holds.")
class HeldRecord:
    system: str
    entity: str
    key: str
    values: list[HeldValue]


@strawberry.type
class SubjectFieldAccess:
    field: str
    decision: str


@strawberry.type(description="One request that read or changed the person's data.")
class SubjectAccess:
    at: dt.datetime
    kind: str
    subject: str | None
    roles: list[str]
    purpose: str | None
    client: str | None
    fields: list[SubjectFieldAccess]
    request_id: str | None


@strawberry.type(description="A record the crosswalk links to the person.")
class LinkedRecord:
    system: str
    key: str


@strawberry.type(description="Everything the connected systems hold about one person.")
class SubjectReport:
    customer: strawberry.ID
    generated_at: dt.datetime
    linked: list[LinkedRecord] = strawberry.field(
        description="Every record of every system that is the person's, duplicates included."
    )
    records: list[HeldRecord] = strawberry.field(
        description="What the graph's bound entities hold for those records, every attribute."
    )
    systems_unavailable: list[str]
    accesses: list[SubjectAccess]


@strawberry.type(description="What an erasure did, system by system.")
class SubjectErasure:
    customer: strawberry.ID
    erased: list[str] = strawberry.field(description="Systems that deleted the records.")
    failed: list[str] = strawberry.field(description="Systems that refused or were down.")
    manual: list[str] = strawberry.field(
        description="Systems that hold records but declare no erase: follow up by hand."
    )
    unlinked: int


def refuse_session(ctx: GraphContext) -> None:
    """An erasure or a restriction is not made through the console's sign-in session: the
    session acts for `rights` to read a person's report (its page), and an irreversible
    change of a person's rights takes a token of the privacy office (or the command
    line). FORBIDDEN whatever the policy file allows."""
    if ctx.session:
        raise user_error(
            "A console session reads a person's report; erasing or restricting takes a "
            "token of the privacy office or the command line.",
            "FORBIDDEN",
            policy="console.session",
        )


def find_customer(
    ctx: GraphContext, email: str | None, phone: str | None, customer: str | None
) -> str:
    """The CUID one of the three keys names (exactly one given), or NOT_FOUND."""
    given = [v for v in (email, phone, customer) if v is not None]
    if len(given) != 1:
        raise user_error("Give exactly one of email, phone or customer.", "BAD_USER_INPUT")
    if customer is not None:
        if not is_cuid(customer):
            raise user_error("'customer' is not a customer id", "BAD_USER_INPUT", field="customer")
        cuid: str | None = customer if ctx.identity.links(customer) is not None else None
    elif email is not None:
        cuid = ctx.identity.find_email(email)
    else:
        cuid = ctx.identity.find_phone(phone or "")
    if cuid is None:
        raise user_error("No customer is linked to this key.", "NOT_FOUND")
    return cuid


def records_of(ctx: GraphContext, cuid: str) -> dict[str, list[str]]:
    """Every record of every system that the crosswalk links to the person, by system
    (duplicates included: the person is owed every record, each listed on its own)."""
    found: dict[str, list[str]] = {}
    for (system, system_id), linked in ctx.identity.by_record.items():
        if linked == cuid:
            found.setdefault(system, []).append(system_id)
    for ids in found.values():
        ids.sort()
    return found


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return orjson.dumps(value, default=str).decode()


async def _held(
    ctx: GraphContext, records: Mapping[str, Sequence[str]]
) -> tuple[list[HeldRecord], list[str]]:
    """The records the graph's bound entities hold for these keys, every attribute."""
    slots = sorted({binding.slot for binding in ctx.bindings.customer.values()})
    held: list[HeldRecord] = []
    unavailable: set[str] = set()
    for source, entity in slots:
        keys = list(records.get(source, ()))
        if not keys:
            continue
        found = await ctx.fetch_many(source, entity, keys)
        for key in keys:
            value = found.get(key)
            if isinstance(value, SourceUnavailable):
                unavailable.add(source)
                continue
            rows = value if isinstance(value, list) else [value] if value else []
            for row in rows:
                if isinstance(row, Mapping):
                    values = [HeldValue(name=k, value=_text(v)) for k, v in row.items()]
                    held.append(HeldRecord(system=source, entity=entity, key=key, values=values))
    return held, sorted(unavailable)


def _accesses(found: Sequence[Mapping[str, Any]], cuid: str) -> list[SubjectAccess]:
    accesses = []
    for record in found:
        fields = (record.get("fields") or {}).get(cuid) or {}
        for write in record.get("writes") or ():
            if write.get("customer") == cuid:
                fields = {**fields, **dict.fromkeys(write.get("fields") or (), "edit")}
        accesses.append(
            SubjectAccess(
                at=dt.datetime.fromisoformat(str(record["ts"]).replace("Z", "+00:00")),
                kind=str(record.get("kind", "access")),
                subject=record.get("subject"),
                roles=list(record.get("roles") or ()),
                purpose=record.get("purpose"),
                client=record.get("client"),
                fields=[SubjectFieldAccess(field=k, decision=v) for k, v in sorted(fields.items())],
                request_id=record.get("request_id"),
            )
        )
    return accesses


@strawberry.type
class RightsQueries:
    @policy_field(
        REPORT_POLICY,
        description=(
            "Everything the systems hold about one person (by email, phone or customer id), "
            "unmasked: it is their own data; and every access to it in the log. The privacy "
            "role acting for `rights` only; itself recorded."
        ),
    )
    async def subject_report(
        self,
        info: Info[GraphContext, None],
        email: str | None = None,
        phone: str | None = None,
        customer: strawberry.ID | None = None,
    ) -> SubjectReport | None:
        ctx = info.context
        cuid = find_customer(ctx, email, phone, customer)
        ctx.touched.add(cuid)
        ctx.audit_query = {"view": "subject-report", "customer": cuid}
        records = records_of(ctx, cuid)
        held, unavailable = await _held(ctx, records)
        for source in unavailable:
            ctx.fail(
                SourceUnavailable(source, "unavailable for a subject report"), ["subjectReport"]
            )
        found = await ctx.audit.search(AuditQuery(customer=cuid, first=MAX_ACCESSES))
        return SubjectReport(
            customer=strawberry.ID(cuid),
            generated_at=dt.datetime.now(dt.UTC),
            linked=[
                LinkedRecord(system=s, key=k) for s, keys in sorted(records.items()) for k in keys
            ],
            records=held,
            systems_unavailable=unavailable,
            accesses=_accesses(found, cuid),
        )


@strawberry.type
class RightsMutations:
    @policy_field(
        ERASE_POLICY,
        description=(
            "Erase one person: a delete to every system whose erase the graph declares, the "
            "crosswalk's links removed (a tombstone stops a later sync re-linking them), "
            "cached records purged. Systems without a declared erase are listed for manual "
            "follow-up. `confirm` must be true. The privacy role acting for `rights` only."
        ),
    )
    async def subject_erase(
        self,
        info: Info[GraphContext, None],
        confirm: bool,
        email: str | None = None,
        phone: str | None = None,
        customer: strawberry.ID | None = None,
    ) -> SubjectErasure | None:
        ctx = info.context
        refuse_session(ctx)
        if confirm is not True:
            raise user_error("An erasure needs confirm: true.", "BAD_USER_INPUT", field="confirm")
        cuid = find_customer(ctx, email, phone, customer)
        return await erase(ctx, cuid)

    @policy_field(
        RESTRICT_POLICY,
        description=(
            "Restrict (or lift the restriction of) the processing of one person's data: "
            "while restricted, every field of theirs is denied to every purpose but the "
            "policy file's `restriction_purposes`, and every edit refused. The privacy role "
            "acting for `rights` only."
        ),
    )
    async def subject_restrict(
        self,
        info: Info[GraphContext, None],
        restricted: bool,
        email: str | None = None,
        phone: str | None = None,
        customer: strawberry.ID | None = None,
    ) -> SubjectRestriction | None:
        ctx = info.context
        refuse_session(ctx)
        cuid = find_customer(ctx, email, phone, customer)
        ctx.touched.add(cuid)
        ctx.writes.append(
            {
                "mutation": "subjectRestrict",
                "customer": cuid,
                "fields": [],
                "decisions": {},
                "restricted": restricted,
                "outcome": "ok",
            }
        )
        await ctx.restrict(cuid, restricted)
        return SubjectRestriction(customer=strawberry.ID(cuid), restricted=restricted)


@strawberry.type(description="Whether a person's processing is restricted, from now on.")
class SubjectRestriction:
    customer: strawberry.ID
    restricted: bool


async def erase(ctx: GraphContext, cuid: str) -> SubjectErasure:
    records = records_of(ctx, cuid)
    declared = dict(ctx.graph.erase_actions)  # source -> action
    entry: dict[str, Any] = {
        "mutation": "subjectErase",
        "customer": cuid,
        "systems": sorted(records),
        "fields": [],
        "decisions": {},
        "outcome": "ok",
    }
    ctx.writes.append(entry)
    ctx.touched.add(cuid)
    erased, failed, manual = [], [], []
    for system, keys in sorted(records.items()):
        action = declared.get(system)
        if action is None:
            manual.append(system)
            continue
        try:
            for key in keys:
                await ctx.sources.write(system, action, {"key": key})
        except (WriteRefused, WriteConflict, SourceUnavailable, WriteValueError):
            failed.append(system)
            continue
        erased.append(system)
        for entity in ctx.sources.connectors[system].entities():
            await ctx.sources.invalidate(system, entity, keys)
    unlinked = 0
    if not failed and ctx.unlink is not None:
        unlinked = await ctx.unlink(cuid)
    entry.update(erased=erased, failed=failed, manual=manual, unlinked=unlinked)
    entry["outcome"] = "ok" if not failed else "partial"
    return SubjectErasure(
        customer=strawberry.ID(cuid), erased=erased, failed=failed, manual=manual, unlinked=unlinked
    )
