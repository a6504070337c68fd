"""The marketing department's system: contacts, consents and segments as a federated GraphQL API.

A strawberry federation 2.3 subgraph, so `_entities` and `_service` work as a gateway expects.
One mutation, `setConsent`, records a consent given or withdrawn (in memory, for the life
of the process).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import strawberry
from aiohttp import web
from graphql import GraphQLError
from strawberry.aiohttp.views import GraphQLView
from strawberry.types import ExecutionContext

from demo.faults import install_faults, json_response
from demo.people import DemoWorld, MarketingContact

__all__ = ["CHANNELS", "MAX_PAGE", "marketing_app", "schema"]

MAX_PAGE = 500
CHANNELS = ("email", "sms", "phone")  # in the order a contact's consents are listed


class BadArgument(ValueError):
    """A client asked for something malformed; it gets the message, the log stays quiet."""


@strawberry.type
class Consent:
    channel: str
    granted: bool
    updated_at: str


@strawberry.federation.type(keys=["id"])
class Contact:
    id: strawberry.ID
    email: str | None
    phone: str | None
    segment: str | None
    consents: list[Consent]

    @classmethod
    def resolve_reference(cls, info: strawberry.Info, id: strawberry.ID) -> Contact | None:
        return _book(info).contacts.get(id)

    @classmethod
    def of(cls, record: MarketingContact) -> Contact:
        return cls(
            id=strawberry.ID(record.id),
            email=record.email,
            phone=record.phone,
            segment=record.segment,
            consents=[Consent(channel=c.channel, granted=c.granted, updated_at=c.updated_at)
                      for c in record.consents],
        )  # fmt: skip


@strawberry.type
class ContactPage:
    items: list[Contact]
    next_cursor: str | None


@strawberry.type
class Segment:
    name: str
    contact_ids: list[strawberry.ID]


@dataclass(frozen=True)
class ContactBook:
    """The marketing records, converted once to the GraphQL types and indexed."""

    ids: list[str]  # sorted, for cursor pages
    contacts: dict[str, Contact]
    segments: dict[str, list[strawberry.ID]]

    @classmethod
    def of(cls, world: DemoWorld) -> ContactBook:
        records = sorted(world.marketing.contacts, key=lambda c: c.id)
        segments: dict[str, list[strawberry.ID]] = {}
        for c in records:
            segments.setdefault(c.segment, []).append(strawberry.ID(c.id))
        return cls([c.id for c in records], {c.id: Contact.of(c) for c in records}, segments)


CONTACT_BOOK = web.AppKey("contact_book", ContactBook)


def _book(info: strawberry.Info) -> ContactBook:
    request: web.Request = info.context["request"]
    return request.app[CONTACT_BOOK]


@strawberry.type
class Query:
    @strawberry.field
    def contact(self, info: strawberry.Info, id: strawberry.ID) -> Contact | None:
        return _book(info).contacts.get(id)

    @strawberry.field(description="Same length and order as `ids`; null where unknown.")
    def contacts(self, info: strawberry.Info, ids: list[strawberry.ID]) -> list[Contact | None]:
        known = _book(info).contacts
        return [known.get(i) for i in ids]

    @strawberry.field(description="All contacts ordered by id, for identity sync.")
    def contact_page(
        self, info: strawberry.Info, first: int = 100, after: str | None = None
    ) -> ContactPage:
        if not 1 <= first <= MAX_PAGE:
            raise BadArgument(f"first must be between 1 and {MAX_PAGE}")
        book = _book(info)
        start = bisect.bisect_right(book.ids, after) if after else 0
        page = book.ids[start : start + first]
        more = start + first < len(book.ids)
        return ContactPage(
            items=[book.contacts[i] for i in page],
            next_cursor=page[-1] if more and page else None,
        )

    @strawberry.field(description="One entry per name asked, in order; unknown names are empty.")
    def segments(self, info: strawberry.Info, names: list[str]) -> list[Segment]:
        known = _book(info).segments
        return [Segment(name=n, contact_ids=list(known.get(n, ()))) for n in names]


@strawberry.type
class Mutation:
    @strawberry.mutation(
        description="Grant or withdraw a contact's consent for one channel (email, sms or "
        "phone), adding the channel when the contact has none for it yet."
    )
    def set_consent(
        self, info: strawberry.Info, contact_id: strawberry.ID, channel: str, granted: bool
    ) -> Consent | None:
        contact = _book(info).contacts.get(contact_id)
        if contact is None:
            raise BadArgument(f"no contact {contact_id}")
        if channel not in CHANNELS:
            raise BadArgument(f"channel must be one of {', '.join(CHANNELS)}")
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # as the seeded ones are
        for consent in contact.consents:
            if consent.channel == channel:
                consent.granted, consent.updated_at = granted, now
                return consent
        consent = Consent(channel=channel, granted=granted, updated_at=now)
        contact.consents.append(consent)
        contact.consents.sort(key=lambda c: CHANNELS.index(c.channel))
        return consent


# Federation 2 is the only mode strawberry 0.341 has (`enable_federation_2` is gone); 2.3 is
# the oldest version with everything used here, so every composer and gateway can read it.
class _Schema(strawberry.federation.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        # strawberry logs every error with a traceback; a client's bad argument is not ours.
        ours = [e for e in errors if not isinstance(e.original_error, BadArgument)]
        super().process_errors(ours, execution_context)


schema = _Schema(query=Query, mutation=Mutation, federation_version="2.3")


async def _healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


def marketing_app(world: DemoWorld, *, latency_ms: int = 0) -> web.Application:
    """The marketing GraphQL API at `/graphql` over `world.marketing`, with the fault hooks."""
    app = web.Application()
    app[CONTACT_BOOK] = ContactBook.of(world)
    install_faults(app, latency_ms)
    app.router.add_get("/healthz", _healthz)
    view: Any = GraphQLView(schema=schema)
    app.router.add_route("*", "/graphql", view)
    return app
