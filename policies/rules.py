"""The policy file that security owns: its data model and a strict loader.

The file is TOML. Its format, key by key, is documented in `policies/default.toml`;
`parse_policy_text` turns such text into an immutable `PolicySet` or raises one
`PolicyFileError` naming the file, line, policy and rule at fault.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

from policies.masks import MASK_NAMES

SUPPORTED_VERSION: Final = 1
ANY_ROLE: Final = "*"
VERBS: Final = frozenset({"read", "edit"})
DEFAULT_VERBS: Final = ("read",)
DEFAULT_POLICY_PATH: Final = Path(__file__).with_name("default.toml")

Effect = Literal["allow", "deny", "mask"]
_Fail = Callable[[str], "PolicyFileError"]

_TOP_KEYS: Final = frozenset(
    {
        "version",
        "roles",
        "purposes",
        "consent_channels",
        "default_policy",
        "restriction_purposes",
        "policy",
    }
)
_POLICY_KEYS: Final = frozenset({"description", "rules", "shadow", "shadow_rules"})
_RULE_KEYS: Final = frozenset(
    {"role", "effect", "purpose", "consent", "owner", "verb", "amr", "acr"}
)
_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]*")
_MASK_EFFECT: Final = re.compile(r"mask\((?P<name>[^()]*)\)")


@dataclass(frozen=True, slots=True)
class Rule:
    """One line of a policy: for `role`, when its conditions hold, do `effect`.

    `purpose`, `verbs`, `role` and the sign-in (`amr`: every listed method, `acr`: one
    of the listed levels) are known once per request (static conditions); `consent` and
    `owner` need facts about the record (record conditions).
    """

    role: str
    effect: Effect
    mask: str | None = None
    purpose: tuple[str, ...] | None = None
    consent: str | None = None
    owner: bool = False
    verbs: tuple[str, ...] = DEFAULT_VERBS
    amr: tuple[str, ...] = ()  # authentication methods the sign-in must include
    acr: tuple[str, ...] = ()  # acceptable authentication context classes

    @property
    def step_up(self) -> dict[str, list[str]]:
        """What a sign-in needs for this rule, as RFC 9470 names it (empty: nothing)."""
        needed: dict[str, list[str]] = {}
        if self.amr:
            needed["amr"] = list(self.amr)
        if self.acr:
            needed["acr_values"] = list(self.acr)
        return needed

    @property
    def needs(self) -> frozenset[str]:
        """The record facts this rule needs: `consent:<channel>`, `owner`."""
        needs: set[str] = set()
        if self.consent is not None:
            needs.add(f"consent:{self.consent}")
        if self.owner:
            needs.add("owner")
        return frozenset(needs)

    @property
    def effect_text(self) -> str:
        """`allow`, `deny` or `mask(<name>)`, as written in the file."""
        return f"mask({self.mask})" if self.effect == "mask" else self.effect

    @property
    def condition_text(self) -> str:
        """The rule's conditions besides role and verb, e.g. `purpose=marketing and
        consent=email`; empty when there are none."""
        parts: list[str] = []
        if self.purpose is not None:
            if len(self.purpose) == 1:
                parts.append(f"purpose={self.purpose[0]}")
            else:
                parts.append(f"purpose in ({', '.join(self.purpose)})")
        if self.consent is not None:
            parts.append(f"consent={self.consent}")
        if self.owner:
            parts.append("owner")
        if self.amr:
            parts.append(f"amr={'+'.join(self.amr)}")
        if self.acr:
            parts.append(f"acr in ({', '.join(self.acr)})")
        return " and ".join(parts)


@dataclass(frozen=True, slots=True)
class Policy:
    """A named list of rules; the first rule that matches decides, none matching denies.

    With `shadow` true, `shadow_rules` are evaluated next to `rules` for every decision
    and reported (`Decision.shadow`), never enforced. `shadow_rules` given with `shadow`
    false are validated and kept but not evaluated.
    """

    name: str
    description: str
    rules: tuple[Rule, ...]
    shadow: bool = False
    shadow_rules: tuple[Rule, ...] = ()
    line: int | None = None


@dataclass(frozen=True, slots=True)
class PolicySet:
    """A loaded, validated policy file."""

    version: int
    roles: tuple[str, ...]
    default_policy: str
    policies: Mapping[str, Policy]
    purposes: tuple[str, ...] = ()
    consent_channels: tuple[str, ...] = ()
    source: str = "<policy>"
    warnings: tuple[str, ...] = ()
    # A person who restricted their data's processing (PIPL art. 44, GDPR art. 18): every
    # field of theirs is denied but for these purposes.
    restriction_purposes: tuple[str, ...] = ()

    def masks_used(self) -> frozenset[str]:
        """Mask names the rules (shadow rules included) apply; the gateway checks that it
        can provide each one (`hash` needs a key) before serving."""
        return frozenset(
            rule.mask
            for policy in self.policies.values()
            for rule in (*policy.rules, *policy.shadow_rules)
            if rule.mask is not None
        )


class PolicyFileError(ValueError):
    """A policy file that cannot be used. The message is one line naming the file, and
    where known the line, policy and rule (`rules[2]`, counted from 0)."""

    def __init__(
        self,
        problem: str,
        *,
        source: str,
        line: int | None = None,
        policy: str | None = None,
        rule: str | None = None,
    ) -> None:
        where = f"{source}:{line}" if line is not None else source
        subject = ""
        if policy is not None:
            subject = f"policy '{policy}'" + (f" {rule}" if rule else "") + ": "
        super().__init__(f"{where}: {subject}{problem}")
        self.problem = problem
        self.source = source
        self.line = line
        self.policy = policy
        self.rule = rule


@dataclass(frozen=True, slots=True)
class Coverage:
    """How a policy file fits the schema that uses it."""

    missing: tuple[str, ...]  # named by the schema, absent from the file: an error
    unused: tuple[str, ...]  # in the file, used by no field: a warning

    @property
    def ok(self) -> bool:
        return not self.missing

    def messages(self) -> tuple[str, ...]:
        errors = [
            f"error: policy '{name}' is used by the schema but not defined" for name in self.missing
        ]
        warnings = [
            f"warning: policy '{name}' is defined but no field uses it" for name in self.unused
        ]
        return (*errors, *warnings)


def validate_against(policy_set: PolicySet, known_policy_names: Set[str]) -> Coverage:
    """Compare the file with the policy names the schema's `@policy` directives use.

    The default policy counts as used: it guards every field without a directive.
    """
    defined = set(policy_set.policies)
    used = set(known_policy_names) | {policy_set.default_policy}
    return Coverage(missing=tuple(sorted(used - defined)), unused=tuple(sorted(defined - used)))


def load_policy_file(path: str | PathLike[str]) -> PolicySet:
    """Read and validate a policy file. Unreadable or invalid → PolicyFileError."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyFileError(f"cannot read policy file ({exc})", source=source) from exc
    return parse_policy_text(text, source)


def load_default_policy() -> PolicySet:
    """The demo policy shipped with the package (`policies/default.toml`)."""
    return load_policy_file(DEFAULT_POLICY_PATH)


def parse_policy_text(text: str, source_name: str) -> PolicySet:
    """Parse and strictly validate policy TOML. Invalid → PolicyFileError."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyFileError(f"not valid TOML: {exc}", source=source_name) from exc
    return _Reader(text, source_name).policy_set(data)


class _Reader:
    """Validates parsed TOML against the source text, which it searches for line numbers."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source

    # -- errors and where they are -------------------------------------------------

    def fail(
        self,
        problem: str,
        *,
        line: int | None = None,
        policy: str | None = None,
        rule: str | None = None,
    ) -> PolicyFileError:
        return PolicyFileError(problem, source=self.source, line=line, policy=policy, rule=rule)

    def line_of(self, offset: int) -> int:
        return self.text.count("\n", 0, offset) + 1

    def key_line(self, key: str) -> int | None:
        match = re.search(rf"^[ \t]*{re.escape(key)}[ \t]*=", self.text, re.MULTILINE)
        return self.line_of(match.start()) if match else None

    def policy_line(self, name: str) -> int | None:
        """The line of `[policy."name"]` (any quoting), else of the name's first mention."""
        key = re.escape(name)
        header = re.compile(
            rf"^[ \t]*\[[ \t]*policy[ \t]*\.[ \t]*(?:\"{key}\"|'{key}'|{key})[ \t]*[\].]",
            re.MULTILINE,
        )
        match = header.search(self.text)
        if match is None:
            match = re.search(rf"[\"']{key}[\"']", self.text)
        return self.line_of(match.start()) if match else None

    def rule_line(self, name: str, list_key: str, index: int) -> int | None:
        """The line where rule `index` of `list_key` starts, best effort; else the
        policy's line."""
        key = re.escape(name)
        array_header = re.compile(
            rf"^[ \t]*\[\[[ \t]*policy[ \t]*\.[ \t]*(?:\"{key}\"|'{key}'|{key})"
            rf"[ \t]*\.[ \t]*{list_key}[ \t]*\]\]",
            re.MULTILINE,
        )
        headers = list(array_header.finditer(self.text))
        if headers:
            return self.line_of(headers[index].start()) if index < len(headers) else None
        start = self.policy_line(name)
        if start is None:
            return None
        begin = sum(len(line) for line in self.text.splitlines(keepends=True)[:start])
        next_header = re.compile(r"^[ \t]*\[", re.MULTILINE).search(self.text, begin)
        end = next_header.start() if next_header else len(self.text)
        array = re.compile(rf"^[ \t]*{list_key}[ \t]*=[ \t]*\[", re.MULTILINE).search(
            self.text, begin, end
        )
        if array is None:
            return start
        offset = _nth_inline_table(self.text, array.end(), index)
        return self.line_of(offset) if offset is not None else start

    # -- the file ------------------------------------------------------------------

    def policy_set(self, data: dict[str, Any]) -> PolicySet:
        for key in data:
            if key not in _TOP_KEYS:
                raise self.fail(
                    f"unknown top-level key '{key}' (allowed: {', '.join(sorted(_TOP_KEYS))})",
                    line=self.key_line(key),
                )
        version = data.get("version")
        if type(version) is not int:
            raise self.fail("'version' must be given as an integer", line=self.key_line("version"))
        if version != SUPPORTED_VERSION:
            raise self.fail(
                f"unsupported version {version} (this gateway reads version {SUPPORTED_VERSION})",
                line=self.key_line("version"),
            )
        roles = self.name_list(data, "roles", required=True)
        purposes = self.name_list(data, "purposes", required=False)
        channels = self.name_list(data, "consent_channels", required=False)
        raw_policies = data.get("policy")
        if not isinstance(raw_policies, dict) or not raw_policies:
            raise self.fail(
                'no policies: add at least one [policy."<name>"] table',
                line=self.key_line("policy"),
            )
        context = _Known(frozenset(roles), frozenset(purposes), frozenset(channels))
        policies = {name: self.policy(name, raw, context) for name, raw in raw_policies.items()}
        default = data.get("default_policy")
        if not isinstance(default, str):
            raise self.fail(
                "'default_policy' must name the policy for fields without @policy",
                line=self.key_line("default_policy"),
            )
        if default not in policies:
            raise self.fail(
                f"default_policy '{default}' is not defined", line=self.key_line("default_policy")
            )
        warnings = tuple(w for policy in policies.values() for w in self.unreachable(policy))
        restriction = self.name_list(data, "restriction_purposes", required=False)
        for purpose in restriction:
            if purpose not in purposes:
                raise self.fail(
                    f"restriction_purposes: unknown purpose '{purpose}' (purposes: "
                    f"{', '.join(purposes) or 'none declared'})",
                    line=self.key_line("restriction_purposes"),
                )
        return PolicySet(
            version=version,
            roles=roles,
            default_policy=default,
            policies=MappingProxyType(policies),
            purposes=purposes,
            consent_channels=channels,
            source=self.source,
            warnings=warnings,
            restriction_purposes=restriction,
        )

    def name_list(self, data: Mapping[str, Any], key: str, *, required: bool) -> tuple[str, ...]:
        raw = data.get(key)
        if raw is None and not required:
            return ()
        line = self.key_line(key)
        if not isinstance(raw, list) or not raw:
            raise self.fail(f"'{key}' must be a non-empty list of names", line=line)
        for item in raw:
            if not isinstance(item, str) or not _NAME.fullmatch(item):
                raise self.fail(f"'{key}' holds {item!r}, which is not a name", line=line)
        if len(set(raw)) != len(raw):
            raise self.fail(f"'{key}' lists a name twice", line=line)
        return tuple(raw)

    def policy(self, name: str, raw: Any, known: _Known) -> Policy:
        line = self.policy_line(name)
        if not _NAME.fullmatch(name):
            raise self.fail(
                "a policy name starts with a letter and holds letters, digits and . _ : -",
                line=line,
                policy=name,
            )
        if not isinstance(raw, dict):
            raise self.fail("must be a table", line=line, policy=name)
        for key, value in raw.items():
            if key not in _POLICY_KEYS:
                hint = ""
                if isinstance(value, dict):
                    hint = f"; a name holding '.' must be quoted: [policy.\"{name}.{key}\"]"
                raise self.fail(
                    f"unknown key '{key}' (allowed: {', '.join(sorted(_POLICY_KEYS))}){hint}",
                    line=line,
                    policy=name,
                )
        description = raw.get("description", "")
        if not isinstance(description, str):
            raise self.fail("'description' must be a string", line=line, policy=name)
        shadow = raw.get("shadow", False)
        if not isinstance(shadow, bool):
            raise self.fail("'shadow' must be true or false", line=line, policy=name)
        rules = self.rule_list(name, raw, "rules", known, line)
        if "shadow_rules" in raw:
            shadow_rules = self.rule_list(name, raw, "shadow_rules", known, line)
        elif shadow:
            raise self.fail("'shadow = true' needs a 'shadow_rules' list", line=line, policy=name)
        else:
            shadow_rules = ()
        return Policy(name, description, rules, shadow, shadow_rules, line)

    def rule_list(
        self, name: str, raw: Mapping[str, Any], key: str, known: _Known, line: int | None
    ) -> tuple[Rule, ...]:
        items = raw.get(key)
        if items is None:
            raise self.fail(f"'{key}' is missing", line=line, policy=name)
        if not isinstance(items, list) or not items:
            raise self.fail(
                f"'{key}' must be a non-empty list of rules (an empty list would deny "
                'everyone: write { role = "*", effect = "deny" } to say so)',
                line=line,
                policy=name,
            )
        return tuple(self.rule(name, key, index, item, known) for index, item in enumerate(items))

    def rule(self, name: str, list_key: str, index: int, raw: Any, known: _Known) -> Rule:
        def fail(problem: str) -> PolicyFileError:
            return self.fail(
                problem,
                line=self.rule_line(name, list_key, index),
                policy=name,
                rule=f"{list_key}[{index}]",
            )

        if not isinstance(raw, dict):
            raise fail('a rule must be a table such as { role = "sales", effect = "allow" }')
        for key in raw:
            if key not in _RULE_KEYS:
                raise fail(f"unknown key '{key}' (allowed: {', '.join(sorted(_RULE_KEYS))})")
        role = raw.get("role")
        if role is None:
            raise fail("'role' is missing (a role name, or \"*\" for any principal)")
        if not isinstance(role, str):
            raise fail(f'bad role {role!r} (a role name, or "*" for any principal)')
        if role != ANY_ROLE and role not in known.roles:
            raise fail(f"unknown role '{role}' (roles: {', '.join(sorted(known.roles))}, or *)")
        effect_text = raw.get("effect")
        if effect_text is None:
            raise fail("'effect' is missing (allow, deny or mask(<name>))")
        if not isinstance(effect_text, str):
            raise fail(f"bad effect {effect_text!r} (allow, deny or mask(<name>))")
        effect, mask = _parse_effect(effect_text, fail)
        purpose = self.condition_names(raw, "purpose", known.purposes, "purposes", fail)
        consent = raw.get("consent")
        if consent is not None:
            if not isinstance(consent, str):
                raise fail("'consent' must be one channel name, e.g. consent = \"email\"")
            if consent not in known.channels:
                declared = ", ".join(sorted(known.channels)) or "none declared"
                raise fail(f"unknown consent channel '{consent}' (consent_channels: {declared})")
        owner = raw.get("owner", False)
        if owner is not True and "owner" in raw:
            raise fail("'owner' can only be true (leave it out for rules without ownership)")
        verbs = raw.get("verb", list(DEFAULT_VERBS))
        if not isinstance(verbs, list) or not verbs:
            raise fail("'verb' must be a non-empty list, e.g. verb = [\"read\"]")
        for verb in verbs:
            if verb not in VERBS:
                raise fail(f"unknown verb {verb!r} (verbs: {', '.join(sorted(VERBS))})")
        sign_in: dict[str, tuple[str, ...]] = {}
        for key in ("amr", "acr"):
            value = raw.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise fail(f"'{key}' must be a list of names, e.g. {key} = [\"mfa\"]")
            sign_in[key] = tuple(dict.fromkeys(value))
        return Rule(
            role,
            effect,
            mask,
            purpose,
            consent,
            owner,
            tuple(dict.fromkeys(verbs)),
            sign_in["amr"],
            sign_in["acr"],
        )

    def condition_names(
        self,
        raw: Mapping[str, Any],
        key: str,
        declared: frozenset[str],
        declared_key: str,
        fail: _Fail,
    ) -> tuple[str, ...] | None:
        values = raw.get(key)
        if values is None:
            return None
        if not isinstance(values, list) or not values:
            raise fail(f"'{key}' must be a non-empty list, e.g. {key} = [\"marketing\"]")
        for value in values:
            if not isinstance(value, str) or value not in declared:
                listed = ", ".join(sorted(declared)) or "none declared"
                raise fail(f"unknown {key} {value!r} ({declared_key}: {listed})")
        return tuple(dict.fromkeys(values))

    def unreachable(self, policy: Policy) -> list[str]:
        """Rules that an earlier unconditional rule always wins over: almost surely a
        mistake in the file, but harmless, so a warning."""
        warnings: list[str] = []
        for list_key, rules in (("rules", policy.rules), ("shadow_rules", policy.shadow_rules)):
            for later, rule in enumerate(rules):
                for earlier in rules[:later]:
                    covers_role = earlier.role in (ANY_ROLE, rule.role)
                    covers_verbs = set(rule.verbs) <= set(earlier.verbs)
                    if covers_role and covers_verbs and not earlier.condition_text:
                        line = self.rule_line(policy.name, list_key, later)
                        where = f"{self.source}:{line}" if line else self.source
                        warnings.append(
                            f"{where}: policy '{policy.name}' {list_key}[{later}]: "
                            "unreachable, an earlier rule always matches first"
                        )
                        break
        return warnings


@dataclass(frozen=True, slots=True)
class _Known:
    roles: frozenset[str]
    purposes: frozenset[str]
    channels: frozenset[str]


def _parse_effect(text: str, fail: _Fail) -> tuple[Effect, str | None]:
    if text == "allow":
        return "allow", None
    if text == "deny":
        return "deny", None
    match = _MASK_EFFECT.fullmatch(text)
    if match is None:
        raise fail(f"bad effect {text!r} (allow, deny or mask(<name>))")
    name = match.group("name")
    if name not in MASK_NAMES:
        raise fail(f"unknown mask '{name}' (masks: {', '.join(sorted(MASK_NAMES))})")
    return "mask", name


def _nth_inline_table(text: str, start: int, index: int) -> int | None:
    """Offset of the `index`-th `{` directly inside the array opened just before `start`,
    skipping strings and comments; None if the array holds fewer tables."""
    depth = 1  # inside the array's `[`
    braces = 0
    count = 0
    pos = start
    while pos < len(text):
        char = text[pos]
        if char == "#":
            newline = text.find("\n", pos)
            pos = len(text) if newline < 0 else newline
            continue
        if char in "\"'":
            pos = _skip_string(text, pos)
            continue
        if char == "{":
            if braces == 0 and depth == 1:
                if count == index:
                    return pos
                count += 1
            braces += 1
        elif char == "}":
            braces -= 1
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth == 0:
                return None
        pos += 1
    return None


def _skip_string(text: str, pos: int) -> int:
    """The offset just after the TOML string starting at `pos`."""
    quote = text[pos]
    if text.startswith(quote * 3, pos):
        end = text.find(quote * 3, pos + 3)
        return len(text) if end < 0 else end + 3
    pos += 1
    while pos < len(text) and text[pos] not in (quote, "\n"):
        pos += 2 if quote == '"' and text[pos] == "\\" else 1
    return pos + 1
