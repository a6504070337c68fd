"""Policy decided in one place (resolvers/decisions.py, FieldGuard.decide_record): a
selection's rules in one pass (what is fetched, slowest system first; what is refused),
and one function finishing a rule for a record, restriction first."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from demo import GRAPH_FILE
from policies import load_default_policy
from policies.engine import Conditional, Decision
from policies.masks import MASKS
from policies.principal import Principal
from resolvers.context import GraphContext
from resolvers.decisions import allowed_at_root, field_rule, plan_selection
from resolvers.graphs import load_graph
from resolvers.guard import RESTRICTED, FieldGuard
from resolvers.loading import record_facts

POLICIES = load_default_policy()
GRAPH = load_graph(GRAPH_FILE)
LATENCY = {"sales": 0.005, "service": 0.020, "marketing": 0.010}


@dataclass
class Sources:
    asked: list[str] = field(default_factory=list)

    def expected_latency_s(self, source: str) -> float:
        self.asked.append(source)
        return LATENCY[source]


def context(
    role: str, purpose: str, subject: str = "rep-1", blocked: frozenset[str] = frozenset()
) -> GraphContext:
    principal = Principal(subject, frozenset({role}), purpose, (purpose,))
    guard = FieldGuard(
        policies=POLICIES,
        principal=principal,
        masks=MASKS,
        facts_of=lambda customer: record_facts(GRAPH.bindings, customer),
        blocked=blocked,
    )
    return GraphContext(
        sources=Sources(),  # type: ignore[arg-type]
        identity=None,  # type: ignore[arg-type]
        bindings=GRAPH.bindings,
        guard=guard,
        graph=GRAPH,
    )


def test_a_selection_is_decided_in_one_pass_slowest_system_first() -> None:
    ctx = context("sales", "sales")
    plan = plan_selection(ctx, ["name", "orders", "tickets", "segment"])
    assert plan.refused == frozenset()
    assert plan.slots == (
        ("service", "tickets"),
        ("marketing", "contact"),
        ("sales", "customer"),
        ("sales", "orders"),
    )
    assert plan.rules["name"].allowed and plan.rules["name"].slots == {("sales", "customer")}


def test_a_refused_field_is_fetched_from_no_system() -> None:
    ctx = context("marketing", "marketing")
    plan = plan_selection(ctx, ["orders", "tickets", "nationalId", "segment"])
    assert plan.refused == {"orders", "tickets", "nationalId"}
    assert plan.slots == (("marketing", "contact"),)
    assert all(plan.rules[name].slots == frozenset() for name in plan.refused)


def test_a_rule_reading_the_record_fetches_its_facts_too() -> None:
    ctx = context("marketing", "marketing")
    rule = field_rule(ctx, "email")  # only with the customer's email consent
    assert isinstance(rule.static, Conditional)
    assert not rule.allowed and not rule.refused
    assert rule.slots == {("sales", "customer"), ("marketing", "contact")}


def test_rules_are_made_once_per_request() -> None:
    ctx = context("sales", "sales")
    assert field_rule(ctx, "email") is field_rule(ctx, "email")
    assert plan_selection(ctx, ["email"]).rules["email"] is field_rule(ctx, "email")


def customer(cuid: str, records: dict[tuple[str, str], Any]) -> Any:
    made = GRAPH.customer(id=cuid, links={})
    made.records.update(records)
    return made


def test_a_record_decision_restriction_first_then_conditions() -> None:
    ctx = context("marketing", "marketing", blocked=frozenset({"cus_blocked"}))
    guard = ctx.guard
    email = field_rule(ctx, "email").static
    contact = ("marketing", "contact")
    granted = customer("cus_a", {contact: {"consents": [{"channel": "email", "granted": True}]}})
    withdrawn = customer("cus_b", {contact: {"consents": [{"channel": "email", "granted": False}]}})
    blocked = customer("cus_blocked", dict(granted.records))
    assert guard.decide_record(email, granted).effect == "allow"
    assert guard.decide_record(email, withdrawn).effect == "deny"
    assert guard.decide_record(email, blocked) is RESTRICTED
    segment = field_rule(ctx, "segment").static
    assert isinstance(segment, Decision)
    assert guard.decide_record(segment, granted) is segment
    assert guard.decide_record(segment, blocked) is RESTRICTED


def test_an_edit_is_decided_with_its_own_verb() -> None:
    ctx = context("sales_manager", "sales")
    read = ctx.guard.static("customer.email")
    edit = ctx.guard.static("customer.email", "edit")
    assert isinstance(read, Decision) and read.effect == "allow"
    assert isinstance(edit, Decision) and edit.effect == "deny" and edit.step_up  # needs mfa
    assert ctx.guard.static("customer.email") is read


def test_root_fields_planned_only_when_the_default_policy_allows() -> None:
    assert allowed_at_root(context("sales", "sales"))
