"""Field policies, enforced through strawberry's field-extension seam.

Every field carrying `@policy(name: ...)` also carries a `PolicyGuard`. The decision's
static part (role, purpose, verb) is made once per policy per request; only policies
with consent or ownership conditions look at the record. A denied field is never
resolved, so its source is never asked; a masked field is resolved, then masked.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import FieldExtension
from strawberry.types import Info
from strawberry.utils.str_converters import to_camel_case

from policies.directive import Policy
from policies.engine import (
    Conditional,
    Decision,
    RecordFacts,
    StaticDecisions,
    decide_record,
    static_decision,
)
from policies.principal import Principal
from policies.rules import PolicySet
from resolvers.decisions import FieldRule, decided

log = logging.getLogger("c360.policy")

# Every field of a person who restricted the processing of their data (PIPL art. 44, GDPR
# art. 18), for a request whose purpose the policy file's `restriction_purposes` omits.
RESTRICTED = Decision("deny", "restriction", None, None, "the person restricted processing: deny")

Mask = Callable[[str], str]


@dataclass
class FieldGuard:
    """One request's policy state: the principal, memoised static decisions, and what
    was decided for which customer (for the access log)."""

    policies: PolicySet
    principal: Principal
    masks: Mapping[str, Mask]
    facts_of: Callable[[Any], RecordFacts]
    verb: str = "read"
    # customer -> field -> decision (effect and policy; never a value), for the access log
    decided: dict[str, dict[str, Decision]] = field(default_factory=dict)
    shadow_differences: int = 0
    # The gateway's, shared by its requests while its policy set is this one.
    decisions: StaticDecisions | None = None
    # CUIDs whose every field is denied to this request: they restricted processing, and
    # its purpose is not one the policy file keeps for them.
    blocked: frozenset[str] = frozenset()
    # The declared fields' rules for this request (resolvers/decisions.py).
    rules: dict[str, FieldRule] = field(default_factory=dict)
    _static: dict[str, Decision | Conditional] = field(default_factory=dict)

    def static(self, policy: str | None, verb: str | None = None) -> Decision | Conditional:
        """The decision's static part (role, purpose, verb, sign-in) for a policy, made
        once per request; `verb` defaults to the request's."""
        name = policy or self.policies.default_policy
        verb = verb or self.verb
        key = name if verb == self.verb else f"{verb}:{name}"
        found = self._static.get(key)
        if found is None:
            shared = self.decisions
            found = self._static[key] = (
                shared(self.principal, name, verb)
                if shared is not None and shared.policy_set is self.policies
                else static_decision(self.policies, self.principal, name, verb)
            )
        return found

    def decide(self, policy: str | None, record_owner: Any) -> Decision:
        """A field's whole decision for the record it belongs to."""
        return self.decide_record(self.static(policy), record_owner)

    def decide_record(self, static: Decision | Conditional, record_owner: Any) -> Decision:
        """The one place a decision meets a record: a person who restricted processing is
        denied every field (but for the purposes the policy file keeps), then a rule's
        consent and ownership conditions read what was fetched of the record."""
        if self.blocked and getattr(record_owner, "id", None) in self.blocked:
            return RESTRICTED
        if decided(static):
            return static
        return self.finish(static, self.facts_of(record_owner))  # type: ignore[arg-type]

    @staticmethod
    def finish(conditional: Conditional, facts: RecordFacts) -> Decision:
        """A conditional decision finished with a record's facts (a write reads them from
        the system it is about to change)."""
        return decide_record(conditional, facts)

    def note_all(self, customer_ids: Iterable[str], field_name: str, decision: Decision) -> None:
        """`note` for many customers given the same decision (a page's static ones)."""
        if decision.shadow is not None:  # each customer's difference is counted and logged
            for customer_id in customer_ids:
                self.note(customer_id, field_name, decision)
            return
        decided = self.decided
        for customer_id in customer_ids:
            decided.setdefault(customer_id, {})[field_name] = decision

    def note(self, customer_id: str | None, field_name: str, decision: Decision) -> None:
        if customer_id is not None:
            self.decided.setdefault(customer_id, {})[field_name] = decision
        shadow = decision.shadow
        if shadow is not None and shadow.effect != decision.effect:
            self.shadow_differences += 1
            log.info(
                "shadow policy would decide differently",
                extra={
                    "policy": decision.policy,
                    "field": field_name,
                    "subject": self.principal.subject,
                    "enforced": decision.effect,
                    "shadow": shadow.effect,
                    "shadow_reason": shadow.reason,
                },
            )

    def mask(self, decision: Decision, value: Any) -> Any:
        if value is None:
            return None
        mask = self.masks.get(decision.mask or "")
        if isinstance(value, str) and mask is not None:
            return mask(value)
        # A mask on something that is not text (a number, a list) hides it entirely.
        return None


def forbidden(decision: Decision) -> GraphQLError:
    return GraphQLError(
        f"Not allowed by policy '{decision.policy}'.",
        extensions={"code": "FORBIDDEN", "policy": decision.policy},
    )


class PolicyGuard(FieldExtension):
    """Decides before the resolver runs. `policy=None` means the file's default policy."""

    def __init__(self, policy: str | None) -> None:
        self.policy = policy

    def _decide(self, source: Any, info: Info) -> tuple[FieldGuard, Decision]:
        guard: FieldGuard = info.context.guard
        decision = guard.decide(self.policy, source)
        guard.note(getattr(source, "id", None), info.field_name, decision)
        if decision.effect == "deny":
            raise forbidden(decision)
        return guard, decision

    def resolve(self, next_: Callable[..., Any], source: Any, info: Info, **kwargs: Any) -> Any:
        guard, decision = self._decide(source, info)
        value = next_(source, info, **kwargs)
        if decision.effect != "mask":
            return value
        if inspect.isawaitable(value):
            return _mask_later(guard, decision, value)
        return guard.mask(decision, value)

    async def resolve_async(
        self, next_: Callable[..., Awaitable[Any]], source: Any, info: Info, **kwargs: Any
    ) -> Any:
        guard, decision = self._decide(source, info)
        value = await next_(source, info, **kwargs)
        return guard.mask(decision, value) if decision.effect == "mask" else value


async def _mask_later(guard: FieldGuard, decision: Decision, value: Awaitable[Any]) -> Any:
    return guard.mask(decision, await value)


def policy_field(name: str, **kwargs: Any) -> Any:
    """`@policy_field("customer.email")`: the directive security reads in schema.graphql,
    and the guard that enforces it, always together."""
    return strawberry.field(
        directives=[Policy(name=name)], extensions=[PolicyGuard(name)], **kwargs
    )


def default_policy_field(**kwargs: Any) -> Any:
    """A root field under the policy file's `default_policy` (any authenticated principal,
    in the shipped file)."""
    return strawberry.field(extensions=[PolicyGuard(None)], **kwargs)


def policies_of(type_: type) -> dict[str, str]:
    """graph field name -> policy name, read from the type's @policy directives."""
    found: dict[str, str] = {}
    for definition in type_.__strawberry_definition__.fields:  # type: ignore[attr-defined]
        for directive in definition.directives:
            if isinstance(directive, Policy):
                found[definition.graphql_name or to_camel_case(definition.python_name)] = (
                    directive.name
                )
    return found
