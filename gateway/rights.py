"""`c360 subject report | erase`: a person's rights from the command line.

The command runs the same GraphQL operations the privacy office would send
(`subjectReport`, `subjectErase`) inside a gateway built from the config, as a principal
of role `privacy` acting for `rights` named after the operator (`cli:<user>`): the policy
file decides as for any request, and the request is recorded in the access log like any
other. Whoever can run it can read the config and its keys already.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import getpass
import os
import time
from pathlib import Path
from typing import Any

import orjson

from gateway.audit.recorder import GraphFacts, access_record, now_iso
from gateway.config import Config
from gateway.console.report import REPORT, render_html
from gateway.http.state import RequestState, new_request_id
from policies.principal import Principal

ERASE = """mutation SubjectErase($email: String, $phone: String, $customer: ID) {
  subjectErase(email: $email, phone: $phone, customer: $customer, confirm: true) {
    customer erased failed manual unlinked
  }
}"""


async def run(config: Config, operation: str, keys: dict[str, str | None]) -> dict[str, Any]:
    """Run `subjectReport` or `subjectErase` in a gateway built from `config`, record the
    request, and return the GraphQL result (`data`, `errors`)."""
    from gateway.app import Gateway

    # A chain of its own: a gateway serving the same log keeps writing its chain meanwhile.
    chain = f"{config.audit.chain}-cli-{os.getpid()}"
    spill = config.audit.spill_path.with_name(f"access-spill-{chain}.jsonl")
    audit = dataclasses.replace(config.audit, chain=chain, spill_path=spill)
    gateway = Gateway(dataclasses.replace(config, audit=audit))
    started = time.perf_counter()
    try:
        await gateway.access_log.start()
        await gateway.store.create()
        await gateway.reload_identity()
        principal = Principal(
            subject=f"cli:{getpass.getuser()}",
            roles=frozenset({"privacy"}),
            purpose="rights",
            purposes=("rights",),
        )
        state = RequestState(new_request_id(), principal=principal)
        context = gateway.context(state)
        result = await gateway.schema.execute(
            REPORT if operation == "report" else ERASE,
            variable_values=keys,
            context_value=context,
        )
        errors = [error.formatted for error in result.errors or ()]
        record = access_record(
            ts=now_iso(),
            trace_id=None,
            request_id=state.request_id,
            principal=principal,
            client="c360-cli",
            status=200,
            outcome="ok" if not errors else ("partial" if result.data else "error"),
            duration_ms=(time.perf_counter() - started) * 1000,
            graph=GraphFacts.of(context),
        )
        gateway.access_log.record(record, awaited=False)
        await gateway.access_log.flush()
        return {"data": result.data, "errors": errors}
    finally:
        await gateway.stop()


def write_html(report: dict[str, Any], path: Path) -> None:
    path.write_text(render_html(report), encoding="utf-8")


def when(value: Any) -> str:
    return value.isoformat() if isinstance(value, dt.datetime) else str(value)


def dumps(value: Any) -> str:
    return orjson.dumps(value, default=when).decode()
