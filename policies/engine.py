"""The decision: allow, mask or deny one field for one principal, as pure functions.

How rules match. A policy's rules are tried in file order and the first rule that
matches decides; if none matches, the answer is deny. A rule matches when its `role` is
`*` or one of the principal's roles (a principal with several roles is therefore tried
against every rule in file order: the first rule matching ANY of its roles wins, not the
most permissive one), the verb is in the rule's `verb` list, the request's purpose is in
the rule's `purpose` list (if it has one; a request without a purpose matches no such
rule), the customer's consent for the rule's `consent` channel is granted (`True`; a
withdrawn or unknown consent does not match) and, for `owner = true`, the record's owner
equals the principal's subject.

The decision comes in two steps so that the gateway pays per value only when it must:
`static_decision` (once per field per request) filters rules on role, purpose and verb.
If the first surviving rule has no record condition, that is the `Decision`. Otherwise it
returns a `Conditional` holding the surviving rules up to the first unconditional one and
the record facts they need; `decide_record` finishes it per record.

Shadow rules. For a policy with `shadow = true` the same inputs are also run through its
`shadow_rules`; the result is attached as `Decision.shadow` (whose own `shadow` is None)
so that the access log can record what a proposed change would have decided. The
enforced fields of the decision never depend on shadow rules. A shadow rule needing
record facts makes the field a `Conditional` even when the enforced rules do not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Final, Literal

from policies.principal import Principal
from policies.rules import ANY_ROLE, PolicySet, Rule

_NO_CONSENTS: Final[Mapping[str, bool]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one field. `mask` names the mask when `effect` is `mask`; `rule`
    is the index of the deciding rule in the policy's `rules` (None when no rule matched
    or the policy is unknown). `reason` holds only policy data, never a value."""

    effect: Literal["allow", "mask", "deny"]
    policy: str
    mask: str | None
    rule: int | None
    reason: str
    shadow: Decision | None = None
    # A denial that a stronger sign-in would have turned: what it needs (RFC 9470's
    # `acr_values`, and `amr`), for an INSUFFICIENT_AUTH answer instead of FORBIDDEN.
    step_up: tuple[tuple[str, tuple[str, ...]], ...] | None = None


@dataclass(frozen=True, slots=True)
class RecordFacts:
    """What the record says that rules may depend on: the customer's consents by channel
    (`email`, `sms`, `phone` → granted) and the record's owner (a principal subject)."""

    consents: Mapping[str, bool] = field(default_factory=lambda: _NO_CONSENTS)
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class Candidate:
    """A rule that survived the static filters, with the decision it makes if it matches."""

    index: int
    rule: Rule
    decision: Decision


@dataclass(frozen=True, slots=True)
class Conditional:
    """A decision that depends on the record: finish it with `decide_record`.

    `needs` lists the record facts to fetch: `consent:<channel>` and/or `owner`
    (for the shadow rules too). Without them the rules that need them do not match.
    """

    policy: str
    subject: str
    candidates: tuple[Candidate, ...]
    otherwise: Decision
    needs: frozenset[str]
    shadow_candidates: tuple[Candidate, ...] | None = None
    shadow_otherwise: Decision | None = None


def static_decision(
    policy_set: PolicySet, principal: Principal, policy_name: str, verb: str = "read"
) -> Decision | Conditional:
    """Decide what can be decided without the record; see the module docstring."""
    policy = policy_set.policies.get(policy_name)
    if policy is None:
        return Decision("deny", policy_name, None, None, f"unknown policy '{policy_name}': deny")
    candidates = _survivors(policy_name, policy.rules, principal, verb, shadow=False)
    otherwise = _no_match(policy_name, shadow=False)
    stepped = _stepped_up(policy_name, policy.rules, principal, verb, candidates)
    if stepped is not None:
        otherwise = stepped
        if candidates and candidates[0].decision.effect == "deny" and not candidates[0].rule.needs:
            candidates = ()  # a stronger sign-in would have matched before this denial
    if not policy.shadow:
        if not candidates or not candidates[0].rule.needs:
            return _first(candidates, otherwise)
        return Conditional(
            policy_name, principal.subject, candidates, otherwise, _needs(candidates)
        )
    shadow_candidates = _survivors(policy_name, policy.shadow_rules, principal, verb, shadow=True)
    shadow_otherwise = _no_match(policy_name, shadow=True)
    needs = _needs(candidates) | _needs(shadow_candidates)
    if not needs:
        enforced = _first(candidates, otherwise)
        return replace(enforced, shadow=_first(shadow_candidates, shadow_otherwise))
    return Conditional(
        policy_name,
        principal.subject,
        candidates,
        otherwise,
        needs,
        shadow_candidates,
        shadow_otherwise,
    )


class StaticDecisions:
    """`static_decision` for one policy set, remembered across requests: it depends on the
    policy, the verb and the principal's roles and purpose only (a `Conditional` also
    carries the subject, put in per call). Bounded: emptied when full."""

    MAX_ENTRIES = 4096

    def __init__(self, policy_set: PolicySet) -> None:
        self.policy_set = policy_set
        self._memo: dict[tuple[object, ...], Decision | Conditional] = {}

    def __call__(
        self, principal: Principal, policy_name: str, verb: str = "read"
    ) -> Decision | Conditional:
        key = (policy_name, verb, principal.roles, principal.purpose, principal.amr, principal.acr)
        found = self._memo.get(key)
        if found is None:
            if len(self._memo) >= self.MAX_ENTRIES:
                self._memo.clear()
            found = self._memo[key] = static_decision(self.policy_set, principal, policy_name, verb)
        if isinstance(found, Conditional) and found.subject != principal.subject:
            return replace(found, subject=principal.subject)
        return found


def decide_record(conditional: Conditional, facts: RecordFacts) -> Decision:
    """Finish a conditional decision with the facts of one record."""
    enforced = _evaluate(conditional.candidates, conditional.otherwise, conditional.subject, facts)
    if conditional.shadow_candidates is None or conditional.shadow_otherwise is None:
        return enforced
    shadow = _evaluate(
        conditional.shadow_candidates, conditional.shadow_otherwise, conditional.subject, facts
    )
    return replace(enforced, shadow=shadow)


def decide(
    policy_set: PolicySet,
    principal: Principal,
    policy_name: str,
    facts: RecordFacts | None,
    verb: str = "read",
) -> Decision:
    """Both steps at once. `facts=None`: no record facts, so conditional rules fail."""
    decision = static_decision(policy_set, principal, policy_name, verb)
    if isinstance(decision, Decision):
        return decision
    return decide_record(decision, facts if facts is not None else RecordFacts())


def _signed_in_enough(rule: Rule, principal: Principal) -> bool:
    if rule.amr and not set(rule.amr) <= principal.amr:
        return False
    return not rule.acr or principal.acr in rule.acr


def _stepped_up(
    policy_name: str,
    rules: tuple[Rule, ...],
    principal: Principal,
    verb: str,
    candidates: tuple[Candidate, ...],
) -> Decision | None:
    """The denial to answer when the first rule that would have matched but for the
    sign-in (`amr`, `acr`) allows or masks, and comes before any surviving rule that
    decides unconditionally: it says what sign-in is needed."""
    decided_at = next((c.index for c in candidates if not c.rule.needs), len(rules))
    for index, rule in enumerate(rules[:decided_at]):
        if verb not in rule.verbs or rule.effect == "deny" or _signed_in_enough(rule, principal):
            continue
        if rule.role != ANY_ROLE and rule.role not in principal.roles:
            continue
        if rule.purpose is not None and principal.purpose not in rule.purpose:
            continue
        needed = tuple((key, tuple(values)) for key, values in rule.step_up.items())
        text = ", ".join(f"{key}={'+'.join(values)}" for key, values in needed)
        reason = f"{policy_name} rules[{index}] needs a stronger sign-in ({text}): deny"
        return Decision("deny", policy_name, None, index, reason, step_up=needed)
    return None


def _survivors(
    policy_name: str, rules: tuple[Rule, ...], principal: Principal, verb: str, *, shadow: bool
) -> tuple[Candidate, ...]:
    survivors: list[Candidate] = []
    for index, rule in enumerate(rules):
        if verb not in rule.verbs:
            continue
        if rule.role != ANY_ROLE and rule.role not in principal.roles:
            continue
        if rule.purpose is not None and principal.purpose not in rule.purpose:
            continue
        if not _signed_in_enough(rule, principal):
            continue
        survivors.append(Candidate(index, rule, _rule_decision(policy_name, index, rule, shadow)))
        if not rule.needs:
            break  # it always matches: nothing after it can decide
    return tuple(survivors)


def _needs(candidates: tuple[Candidate, ...]) -> frozenset[str]:
    return frozenset(need for candidate in candidates for need in candidate.rule.needs)


def _first(candidates: tuple[Candidate, ...], otherwise: Decision) -> Decision:
    return candidates[0].decision if candidates else otherwise


def _evaluate(
    candidates: tuple[Candidate, ...], otherwise: Decision, subject: str, facts: RecordFacts
) -> Decision:
    for candidate in candidates:
        rule = candidate.rule
        if rule.consent is not None and facts.consents.get(rule.consent) is not True:
            continue
        if rule.owner and (not facts.owner or facts.owner != subject):
            continue
        return candidate.decision
    return otherwise


def _rule_decision(policy_name: str, index: int, rule: Rule, shadow: bool) -> Decision:
    list_key = "shadow_rules" if shadow else "rules"
    conditions = f"role {rule.role}"
    if rule.condition_text:
        conditions += f", {rule.condition_text}"
    reason = f"{policy_name} {list_key}[{index}] ({conditions}): {rule.effect_text}"
    return Decision(rule.effect, policy_name, rule.mask, index, reason)


def _no_match(policy_name: str, *, shadow: bool) -> Decision:
    list_key = "shadow_rules" if shadow else "rules"
    return Decision("deny", policy_name, None, None, f"{policy_name}: no {list_key} match: deny")


# -- explain ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExplainRow:
    """One policy's effect per role, e.g. `allow if purpose=marketing and consent=email,
    else deny`. `shadow_cells` is set for policies with active shadow rules."""

    policy: str
    description: str
    cells: Mapping[str, str]
    shadow_cells: Mapping[str, str] | None = None

    def as_dict(self) -> dict[str, object]:
        row: dict[str, object] = {
            "policy": self.policy,
            "description": self.description,
            "roles": dict(self.cells),
        }
        if self.shadow_cells is not None:
            row["shadow"] = dict(self.shadow_cells)
        return row


def explain(
    policy_set: PolicySet, roles: Iterable[str] | None = None, verb: str = "read"
) -> tuple[ExplainRow, ...]:
    """The policy × role matrix for principals holding one role each; `roles` defaults to
    the file's roles, in file order. Purpose, consent and ownership show as conditions.
    Raises ValueError for a role the file does not declare."""
    chosen = tuple(roles) if roles is not None else policy_set.roles
    for role in chosen:
        if role not in policy_set.roles:
            known = ", ".join(policy_set.roles)
            raise ValueError(f"unknown role '{role}' (roles: {known})")
    rows: list[ExplainRow] = []
    for name in sorted(policy_set.policies):
        policy = policy_set.policies[name]
        cells = {role: _chain(policy.rules, role, verb) for role in chosen}
        shadow_cells: Mapping[str, str] | None = None
        if policy.shadow:
            shadow = {role: _chain(policy.shadow_rules, role, verb) for role in chosen}
            shadow_cells = MappingProxyType(shadow)
        rows.append(ExplainRow(name, policy.description, MappingProxyType(cells), shadow_cells))
    return tuple(rows)


def _chain(rules: tuple[Rule, ...], role: str, verb: str) -> str:
    steps: list[str] = []
    for rule in rules:
        if verb not in rule.verbs or rule.role not in (ANY_ROLE, role):
            continue
        if not rule.condition_text:
            steps.append(rule.effect_text)
            break
        steps.append(f"{rule.effect_text} if {rule.condition_text}")
    else:
        steps.append("deny")
    return ", else ".join(steps)


def format_matrix(rows: Iterable[ExplainRow]) -> str:
    """`explain` rows as a plain-text table, one line per policy (shadow rows follow
    their policy, marked `(shadow)`)."""
    lines: list[tuple[str, ...]] = []
    header: tuple[str, ...] | None = None
    for row in rows:
        if header is None:
            header = ("policy", *row.cells)
        lines.append((row.policy, *row.cells.values()))
        if row.shadow_cells is not None:
            lines.append((f"{row.policy} (shadow)", *row.shadow_cells.values()))
    if header is None:
        return ""
    table = [header, *lines]
    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in table
    )
