"""The decision engine against the shipped default.toml: the CONTRACT.md matrix cell by
cell, purposes, consent, ownership, several roles, verbs, shadow rules and explain."""

from __future__ import annotations

import json

import pytest

from policies import (
    Conditional,
    Decision,
    PolicySet,
    Principal,
    RecordFacts,
    StaticDecisions,
    decide,
    decide_record,
    explain,
    format_matrix,
    load_default_policy,
    parse_policy_text,
    static_decision,
)

DEFAULT = load_default_policy()

# The field → policy mapping of the demo graph (CONTRACT.md).
FIELD_POLICY = {
    "name": "customer.name",
    "email": "customer.email",
    "phone": "customer.phone",
    "nationalId": "customer.nationalId",
    "address": "customer.address",
    "lifetimeValue": "customer.lifetimeValue",
    "orders": "customer.orders",
    "tickets": "customer.tickets",
    "satisfaction": "customer.tickets",
    "segment": "customer.segment",
    "consents": "customer.segment",
}

ROLES = ("sales", "service", "marketing", "security")
# CONTRACT.md's matrix, one row per field, one column per role in ROLES order. The
# marketing email cell is conditional: "deny" here is its answer without purpose and
# consent; the conditional tests below cover the rest.
MATRIX = {
    "name": ("allow", "allow", "allow", "mask(name)"),
    "email": ("allow", "allow", "deny", "mask(email)"),
    "phone": ("allow", "allow", "mask(phone)", "mask(phone)"),
    "nationalId": ("mask(national_id)", "mask(national_id)", "deny", "mask(national_id)"),
    "address": ("allow", "allow", "mask(address)", "deny"),
    "lifetimeValue": ("allow", "deny", "allow", "deny"),
    "orders": ("allow", "allow", "deny", "deny"),
    "tickets": ("allow", "allow", "deny", "deny"),
    "satisfaction": ("allow", "allow", "deny", "deny"),
    "segment": ("allow", "allow", "allow", "allow"),
    "consents": ("allow", "allow", "allow", "allow"),
}
CELLS = [
    (field, role, expected)
    for field, row in MATRIX.items()
    for role, expected in zip(ROLES, row, strict=True)
]


def principal(*roles: str, purpose: str | None = None, subject: str = "u1") -> Principal:
    purposes = (purpose,) if purpose else ()
    return Principal(subject=subject, roles=frozenset(roles), purpose=purpose, purposes=purposes)


def as_text(decision: Decision) -> str:
    return f"mask({decision.mask})" if decision.effect == "mask" else decision.effect


def test_matrix_covers_every_field_of_the_contract() -> None:
    assert set(MATRIX) == set(FIELD_POLICY)
    assert len(CELLS) == 11 * 4


@pytest.mark.parametrize(("field", "role", "expected"), CELLS)
def test_contract_matrix_cell(field: str, role: str, expected: str) -> None:
    decision = decide(DEFAULT, principal(role), FIELD_POLICY[field], None)
    assert as_text(decision) == expected
    assert decision.policy == FIELD_POLICY[field]
    if decision.effect == "mask":
        assert decision.mask is not None
    else:
        assert decision.mask is None


@pytest.mark.parametrize(("field", "role", "expected"), CELLS)
def test_contract_matrix_cell_does_not_depend_on_a_generous_record(
    field: str, role: str, expected: str
) -> None:
    facts = RecordFacts(consents={"email": True, "sms": True, "phone": True}, owner="u1")
    if (field, role) == ("email", "marketing"):
        expected = "deny"  # still needs purpose=marketing: no purpose here
    assert as_text(decide(DEFAULT, principal(role), FIELD_POLICY[field], facts)) == expected


@pytest.mark.parametrize("field", sorted(FIELD_POLICY))
def test_sales_manager_sees_customer_fields_as_sales_does(field: str) -> None:
    policy = FIELD_POLICY[field]
    manager = decide(DEFAULT, principal("sales_manager"), policy, None)
    sales = decide(DEFAULT, principal("sales"), policy, None)
    assert (manager.effect, manager.mask) == (sales.effect, sales.mask)


@pytest.mark.parametrize("field", sorted(FIELD_POLICY))
def test_principal_without_roles_is_denied_every_customer_field(field: str) -> None:
    assert decide(DEFAULT, principal(), FIELD_POLICY[field], None).effect == "deny"


def test_default_policy_allows_any_authenticated_principal() -> None:
    assert DEFAULT.default_policy == "authenticated"
    for roles in [(), ("sales",), ("security",), ("someone-new",)]:
        decision = decide(DEFAULT, principal(*roles), DEFAULT.default_policy, None)
        assert decision.effect == "allow"
        assert decision.rule == 0


# -- marketing email: purpose and consent -------------------------------------------

MARKETING_EMAIL_CASES = [
    ("marketing", {"email": True}, "allow"),
    ("marketing", {"email": False}, "deny"),  # withdrawn
    ("marketing", {}, "deny"),  # unknown
    ("marketing", {"sms": True, "phone": True}, "deny"),  # other channels do not count
    (None, {"email": True}, "deny"),
    ("sales", {"email": True}, "deny"),
    ("audit", {"email": True}, "deny"),
]


@pytest.mark.parametrize(("purpose", "consents", "expected"), MARKETING_EMAIL_CASES)
def test_marketing_email_needs_purpose_and_consent(
    purpose: str | None, consents: dict[str, bool], expected: str
) -> None:
    facts = RecordFacts(consents=consents)
    decision = decide(DEFAULT, principal("marketing", purpose=purpose), "customer.email", facts)
    assert decision.effect == expected
    if expected == "allow":
        assert decision.rule == 5
        assert "consent=email" in decision.reason
    else:
        assert decision.rule is None


def test_marketing_email_without_record_facts_is_denied() -> None:
    decision = decide(DEFAULT, principal("marketing", purpose="marketing"), "customer.email", None)
    assert decision.effect == "deny"


def test_consent_must_be_exactly_true() -> None:
    facts = RecordFacts(consents={"email": 1})  # type: ignore[dict-item]
    who = principal("marketing", purpose="marketing")
    assert decide(DEFAULT, who, "customer.email", facts).effect == "deny"


def test_static_part_of_marketing_email_is_conditional_on_consent() -> None:
    result = static_decision(DEFAULT, principal("marketing", purpose="marketing"), "customer.email")
    assert isinstance(result, Conditional)
    assert result.needs == frozenset({"consent:email"})
    assert [candidate.index for candidate in result.candidates] == [5]
    granted = decide_record(result, RecordFacts(consents={"email": True}))
    withdrawn = decide_record(result, RecordFacts(consents={"email": False}))
    assert (granted.effect, withdrawn.effect) == ("allow", "deny")


def test_static_part_without_the_purpose_is_already_a_denial() -> None:
    result = static_decision(DEFAULT, principal("marketing", purpose="sales"), "customer.email")
    assert isinstance(result, Decision)
    assert result.effect == "deny"


@pytest.mark.parametrize("role", ["sales", "service", "security"])
def test_roles_without_record_conditions_are_decided_statically(role: str) -> None:
    for policy in DEFAULT.policies:
        if policy == "opportunity.owned":
            continue
        assert isinstance(static_decision(DEFAULT, principal(role), policy), Decision)


# -- ownership ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("roles", "owner", "expected"),
    [
        (("sales",), "rep-1", "allow"),
        (("sales",), "rep-2", "deny"),
        (("sales",), None, "deny"),
        (("sales_manager",), "rep-2", "allow"),
        (("sales_manager",), None, "allow"),
        (("service",), "rep-1", "deny"),
        (("marketing",), "rep-1", "deny"),
        (("security",), "rep-1", "deny"),
        (("sales", "sales_manager"), "rep-2", "allow"),
    ],
)
def test_opportunity_ownership(roles: tuple[str, ...], owner: str | None, expected: str) -> None:
    who = principal(*roles, subject="rep-1")
    decision = decide(DEFAULT, who, "opportunity.owned", RecordFacts(owner=owner))
    assert decision.effect == expected


def test_rep_ownership_is_a_record_condition_and_manager_is_static() -> None:
    rep = static_decision(DEFAULT, principal("sales", subject="rep-1"), "opportunity.owned")
    assert isinstance(rep, Conditional)
    assert rep.needs == frozenset({"owner"})
    assert rep.subject == "rep-1"
    manager = static_decision(DEFAULT, principal("sales_manager"), "opportunity.owned")
    assert isinstance(manager, Decision)
    assert manager.effect == "allow"


def test_empty_subject_never_owns_a_record_without_owner() -> None:
    who = principal("sales", subject="")
    assert decide(DEFAULT, who, "opportunity.owned", RecordFacts(owner="")).effect == "deny"


def test_ownership_without_facts_is_denied() -> None:
    assert decide(DEFAULT, principal("sales"), "opportunity.owned", None).effect == "deny"


# -- several roles --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("roles", "policy", "expected"),
    [
        # the first rule in file order naming any of the roles wins
        (("marketing", "sales"), "customer.email", "allow"),
        (("marketing", "security"), "customer.phone", "mask(phone)"),
        (("security", "marketing"), "customer.address", "mask(address)"),
        (("security", "service"), "customer.name", "allow"),
        (("marketing", "service"), "customer.lifetimeValue", "allow"),
        (("marketing", "security"), "customer.orders", "deny"),
        (("marketing", "security"), "customer.nationalId", "mask(national_id)"),
    ],
)
def test_several_roles_first_matching_rule_in_file_order(
    roles: tuple[str, ...], policy: str, expected: str
) -> None:
    assert as_text(decide(DEFAULT, principal(*roles), policy, None)) == expected


SCRATCH = """
version = 1
roles = ["a", "b"]
purposes = ["p", "q"]
consent_channels = ["email"]
default_policy = "open"

[policy.open]
rules = [{ role = "*", effect = "allow" }]

[policy.first-wins]
rules = [
  { role = "a", effect = "deny" },
  { role = "b", effect = "allow" },
]

[policy.verbs]
rules = [
  { role = "a", effect = "allow", verb = ["read", "edit"] },
  { role = "b", effect = "allow" },
  { role = "b", effect = "mask(redact)", verb = ["edit"] },
]

[policy.chain]
rules = [
  { role = "a", effect = "allow", purpose = ["p"], consent = "email" },
  { role = "a", effect = "mask(email)", purpose = ["p", "q"] },
  { role = "b", effect = "allow", owner = true, consent = "email" },
]

[policy.cut]
rules = [
  { role = "a", effect = "allow", consent = "email" },
  { role = "a", effect = "mask(redact)" },
  { role = "a", effect = "allow", owner = true },
]

[policy.trial]
shadow = true
rules = [{ role = "a", effect = "allow" }]
shadow_rules = [
  { role = "a", effect = "mask(redact)" },
  { role = "b", effect = "allow", owner = true },
]

[policy.parked]
rules = [{ role = "a", effect = "allow" }]
shadow_rules = [{ role = "a", effect = "deny" }]
"""


@pytest.fixture(scope="module")
def scratch() -> PolicySet:
    return parse_policy_text(SCRATCH, "scratch.toml")


def test_an_early_explicit_deny_wins_over_a_later_allow_for_another_role(
    scratch: PolicySet,
) -> None:
    assert decide(scratch, principal("a", "b"), "first-wins", None).effect == "deny"
    assert decide(scratch, principal("b", "a"), "first-wins", None).effect == "deny"
    assert decide(scratch, principal("b"), "first-wins", None).effect == "allow"


# -- verbs ----------------------------------------------------------------------------


def test_rules_default_to_read_only(scratch: PolicySet) -> None:
    assert decide(scratch, principal("b"), "verbs", None, verb="read").effect == "allow"
    edit = decide(scratch, principal("b"), "verbs", None, verb="edit")
    assert (edit.effect, edit.mask, edit.rule) == ("mask", "redact", 2)
    assert decide(scratch, principal("a"), "verbs", None, verb="edit").effect == "allow"


# CONTRACT.md's edit rules: (policy, role) -> what allows the edit; every other is denied.
EDITS = {
    **{(f"customer.{f}", "sales"): "owner, mfa" for f in ("email", "phone", "address")},
    **{(f"customer.{f}", "sales_manager"): "mfa" for f in ("email", "phone", "address")},
    ("consent.edit", "marketing"): "purpose marketing",
    **{("customer.followups", r): "any" for r in ("sales", "sales_manager")},
    ("rights.erase", "privacy"): "purpose rights",
    ("rights.restrict", "privacy"): "purpose rights",
}


@pytest.mark.parametrize("policy", sorted(DEFAULT.policies))
def test_default_file_grants_only_the_contracts_edits(policy: str) -> None:
    everything = RecordFacts(consents={"email": True, "sms": True, "phone": True}, owner="x")
    for role in DEFAULT.roles:
        for purpose in (*DEFAULT.purposes, None):
            who = Principal("x", frozenset({role}), purpose, amr=frozenset({"mfa"}))
            effect = decide(DEFAULT, who, policy, everything, verb="edit").effect
            granted = EDITS.get((policy, role))
            needs = (
                granted.removeprefix("purpose ")
                if granted and granted.startswith("purpose")
                else None
            )
            if granted is None or (needs is not None and purpose != needs):
                assert effect == "deny", (policy, role, purpose)
            else:
                assert effect == "allow", (policy, role, purpose)


def test_unknown_verb_is_denied(scratch: PolicySet) -> None:
    assert decide(scratch, principal("a"), "open", None, verb="delete").effect == "deny"


# -- conditional chains ---------------------------------------------------------------


def test_conditional_chain_falls_through_to_the_next_candidate(scratch: PolicySet) -> None:
    who = principal("a", purpose="p")
    result = static_decision(scratch, who, "chain")
    assert isinstance(result, Conditional)
    assert [candidate.index for candidate in result.candidates] == [0, 1]
    assert result.needs == frozenset({"consent:email"})
    allowed = decide_record(result, RecordFacts(consents={"email": True}))
    masked = decide_record(result, RecordFacts())
    assert (allowed.effect, allowed.rule) == ("allow", 0)
    assert (masked.effect, masked.mask, masked.rule) == ("mask", "email", 1)


def test_candidates_stop_at_the_first_unconditional_rule(scratch: PolicySet) -> None:
    result = static_decision(scratch, principal("a"), "cut")
    assert isinstance(result, Conditional)
    assert [candidate.index for candidate in result.candidates] == [0, 1]
    assert result.needs == frozenset({"consent:email"})  # rules[2] can never decide
    assert decide_record(result, RecordFacts(owner="u1")).mask == "redact"


def test_purpose_filter_removes_rules_statically(scratch: PolicySet) -> None:
    result = static_decision(scratch, principal("a", purpose="q"), "chain")
    assert isinstance(result, Decision)
    assert (result.effect, result.mask, result.rule) == ("mask", "email", 1)


def test_all_record_conditions_of_a_rule_must_hold(scratch: PolicySet) -> None:
    who = principal("b", subject="s")
    result = static_decision(scratch, who, "chain")
    assert isinstance(result, Conditional)
    assert result.needs == frozenset({"owner", "consent:email"})
    both = RecordFacts(consents={"email": True}, owner="s")
    assert decide_record(result, both).effect == "allow"
    assert decide_record(result, RecordFacts(consents={"email": True}, owner="t")).effect == "deny"
    assert decide_record(result, RecordFacts(owner="s")).effect == "deny"


# -- unknown policy -------------------------------------------------------------------


def test_unknown_policy_is_denied_with_a_reason() -> None:
    decision = decide(DEFAULT, principal("sales"), "customer.shoeSize", None)
    assert decision == Decision(
        "deny", "customer.shoeSize", None, None, "unknown policy 'customer.shoeSize': deny"
    )
    assert isinstance(static_decision(DEFAULT, principal("sales"), "nope"), Decision)


def test_reasons_name_the_policy_and_rule() -> None:
    decision = decide(DEFAULT, principal("security"), "customer.phone", None)
    assert decision.rule == 6
    assert decision.reason == "customer.phone rules[6] (role security): mask(phone)"
    denied = decide(DEFAULT, principal("security"), "customer.orders", None)
    assert denied.reason == "customer.orders: no rules match: deny"


# -- shadow ---------------------------------------------------------------------------


def test_shadow_rules_are_reported_never_enforced(scratch: PolicySet) -> None:
    decision = decide(scratch, principal("a"), "trial", None)
    assert (decision.effect, decision.rule) == ("allow", 0)
    assert decision.shadow is not None
    assert (decision.shadow.effect, decision.shadow.mask) == ("mask", "redact")
    assert decision.shadow.reason.startswith("trial shadow_rules[0]")
    assert decision.shadow.shadow is None


def test_shadow_rules_needing_record_facts_make_the_field_conditional(
    scratch: PolicySet,
) -> None:
    who = principal("b", subject="s")
    result = static_decision(scratch, who, "trial")
    assert isinstance(result, Conditional)
    assert result.needs == frozenset({"owner"})
    owned = decide_record(result, RecordFacts(owner="s"))
    assert owned.effect == "deny"  # enforced: b has no rule
    assert owned.shadow is not None
    assert owned.shadow.effect == "allow"
    other = decide_record(result, RecordFacts(owner="t"))
    assert other.effect == "deny"
    assert other.shadow is not None
    assert other.shadow.effect == "deny"


def test_shadow_rules_of_a_policy_not_in_shadow_are_ignored(scratch: PolicySet) -> None:
    decision = decide(scratch, principal("a"), "parked", None)
    assert decision.effect == "allow"
    assert decision.shadow is None


def test_decisions_without_shadow_carry_none() -> None:
    assert decide(DEFAULT, principal("sales"), "customer.name", None).shadow is None


# -- explain --------------------------------------------------------------------------


def test_explain_renders_the_contract_matrix() -> None:
    rows = {row.policy: row for row in explain(DEFAULT)}
    assert set(rows) == set(DEFAULT.policies)
    assert tuple(rows["customer.name"].cells) == DEFAULT.roles
    for field, expected_row in MATRIX.items():
        cells = rows[FIELD_POLICY[field]].cells
        for role, expected in zip(ROLES, expected_row, strict=True):
            if (field, role) == ("email", "marketing"):
                expected = "allow if purpose=marketing and consent=email, else deny"
            assert cells[role] == expected


def test_explain_renders_ownership_and_chains(scratch: PolicySet) -> None:
    rows = {row.policy: row for row in explain(DEFAULT, ["sales", "sales_manager"])}
    assert dict(rows["opportunity.owned"].cells) == {
        "sales": "allow if owner, else deny",
        "sales_manager": "allow",
    }
    chain = {row.policy: row for row in explain(scratch)}["chain"].cells
    assert chain["a"] == (
        "allow if purpose=p and consent=email, else mask(email) if purpose in (p, q), else deny"
    )
    assert chain["b"] == "allow if consent=email and owner, else deny"


def test_explain_for_edit_and_shadow(scratch: PolicySet) -> None:
    rows = {row.policy: row for row in explain(scratch, ["b"], verb="edit")}
    assert rows["verbs"].cells["b"] == "mask(redact)"
    trial = {row.policy: row for row in explain(scratch)}["trial"]
    assert trial.shadow_cells is not None
    assert dict(trial.shadow_cells) == {"a": "mask(redact)", "b": "allow if owner, else deny"}
    assert trial.as_dict()["shadow"] == {"a": "mask(redact)", "b": "allow if owner, else deny"}


def test_explain_rejects_unknown_role() -> None:
    with pytest.raises(ValueError, match="unknown role 'salse'"):
        explain(DEFAULT, ["salse"])


def test_explain_rows_serialise_and_print() -> None:
    rows = explain(DEFAULT, ["marketing"])
    data = json.loads(json.dumps([row.as_dict() for row in rows]))
    email = next(row for row in data if row["policy"] == "customer.email")
    assert email["roles"] == {
        "marketing": "allow if purpose=marketing and consent=email, else deny"
    }
    assert "shadow" not in email
    table = format_matrix(rows).splitlines()
    assert table[0].split() == ["policy", "marketing"]
    assert len(table) == len(DEFAULT.policies) + 1
    assert format_matrix([]) == ""


def test_remembered_static_decisions_are_the_engines_for_every_principal() -> None:
    """The gateway's cache of static decisions answers exactly as static_decision,
    including a conditional's subject (ownership is checked against the caller)."""
    remembered = StaticDecisions(DEFAULT)
    principals = [
        Principal(subject=subject, roles=frozenset(roles), purpose=purpose)
        for subject in ("rep-1", "rep-2")
        for roles in (("sales",), ("marketing",), ("sales", "service"), ("sales_manager",), ())
        for purpose in (None, "marketing", "sales")
    ]
    policies = [*FIELD_POLICY.values(), "opportunity.owned", "no.such.policy"]
    for _ in range(2):  # computed, then remembered
        for principal in principals:
            for policy in policies:
                expected = static_decision(DEFAULT, principal, policy)
                assert remembered(principal, policy) == expected, (principal, policy)
    owned = remembered(principals[0], "opportunity.owned")
    assert isinstance(owned, Conditional) and owned.subject == "rep-1"
    assert remembered(principals[15], "opportunity.owned").subject == "rep-2"  # type: ignore[union-attr]
    bounded = StaticDecisions(DEFAULT)
    bounded.MAX_ENTRIES = 3
    for policy in policies:
        assert bounded(principals[0], policy) == static_decision(DEFAULT, principals[0], policy)
        assert 1 <= len(bounded._memo) <= 3


# -- the edit verb and step-up sign-in ------------------------------------------------


def _editor(role: str, amr: frozenset[str] = frozenset(), subject: str = "rep-1") -> Principal:
    return Principal(subject=subject, roles=frozenset({role}), purpose="sales", amr=amr)


@pytest.mark.parametrize("field", ["email", "phone", "address"])
def test_edits_need_mfa_and_a_rep_edits_only_their_own_customers(field: str) -> None:
    policy = FIELD_POLICY[field]
    mfa = frozenset({"pwd", "mfa"})
    without = static_decision(DEFAULT, _editor("sales"), policy, "edit")
    assert isinstance(without, Decision) and without.effect == "deny"
    assert without.step_up == (("amr", ("mfa",)),)
    manager = static_decision(DEFAULT, _editor("sales_manager", mfa), policy, "edit")
    assert isinstance(manager, Decision) and manager.effect == "allow"
    rep = static_decision(DEFAULT, _editor("sales", mfa), policy, "edit")
    assert isinstance(rep, Conditional) and rep.needs == frozenset({"owner"})
    assert decide_record(rep, RecordFacts(owner="rep-1")).effect == "allow"
    refused = decide_record(rep, RecordFacts(owner="rep-2"))
    assert refused.effect == "deny" and refused.step_up is None
    # Reading is what it was: the edit rules never decide a read.
    assert static_decision(DEFAULT, _editor("sales"), policy).effect == "allow"  # type: ignore[union-attr]


@pytest.mark.parametrize("role", ["service", "marketing", "security"])
def test_every_other_edit_of_customer_fields_is_denied_without_step_up(role: str) -> None:
    for field in ("email", "phone", "address", "name", "nationalId"):
        decision = static_decision(
            DEFAULT, _editor(role, frozenset({"mfa"})), FIELD_POLICY[field], "edit"
        )
        assert isinstance(decision, Decision) and decision.effect == "deny"
        assert decision.step_up is None


def test_marketing_records_consents_only_for_marketing() -> None:
    for purpose, effect in (("marketing", "allow"), ("sales", "deny")):
        principal = Principal("m", frozenset({"marketing"}), purpose)
        decision = static_decision(DEFAULT, principal, "consent.edit", "edit")
        assert isinstance(decision, Decision) and decision.effect == effect


def test_a_step_up_rule_after_an_unconditional_match_changes_nothing() -> None:
    policies = parse_policy_text(
        """
version = 1
roles = ["a"]
default_policy = "p"
[policy.p]
rules = [
  { role = "a", effect = "mask(redact)", verb = ["edit"] },
  { role = "a", effect = "allow", verb = ["edit"], amr = ["mfa"] },
]
""",
        "inline.toml",
    )
    decision = static_decision(policies, Principal("x", frozenset({"a"}), None), "p", "edit")
    assert isinstance(decision, Decision) and decision.effect == "mask" and decision.step_up is None
    explained = explain(policies, ["a"], "edit")[0].cells["a"]
    assert explained == "mask(redact)"
