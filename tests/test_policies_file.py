"""The policy file: the shipped default loads, and every kind of mistake is refused with a
message naming the file, line, policy and rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies import (
    DEFAULT_POLICY_PATH,
    MASK_NAMES,
    PolicyFileError,
    Rule,
    load_default_policy,
    load_policy_file,
    parse_policy_text,
    validate_against,
)

GOOD = """\
version = 1
roles = ["sales", "marketing"]
purposes = ["marketing"]
consent_channels = ["email"]
default_policy = "authenticated"

[policy.authenticated]
description = "Any authenticated principal"
rules = [{ role = "*", effect = "allow" }]

[policy."customer.email"]
description = "Contact email"
rules = [
  { role = "sales", effect = "allow" },
  # a comment with a { brace and a "quote
  { role = "marketing", effect = "allow", purpose = ["marketing"], consent = "email" },
  { role = "marketing", effect = "mask(email)", verb = ["read"] },
]
"""
# line numbers in GOOD
EMAIL_HEADER_LINE = 11
EMAIL_RULE_LINES = (14, 16, 17)


def parse(text: str) -> None:
    parse_policy_text(text, "policy.toml")


def error_for(text: str) -> str:
    with pytest.raises(PolicyFileError) as info:
        parse(text)
    return str(info.value)


def test_good_file_parses_into_rules() -> None:
    policy_set = parse_policy_text(GOOD, "policy.toml")
    assert policy_set.version == 1
    assert policy_set.roles == ("sales", "marketing")
    assert policy_set.default_policy == "authenticated"
    assert policy_set.source == "policy.toml"
    assert policy_set.warnings == ()
    email = policy_set.policies["customer.email"]
    assert email.line == EMAIL_HEADER_LINE
    assert email.description == "Contact email"
    assert email.shadow is False
    assert email.rules == (
        Rule("sales", "allow"),
        Rule("marketing", "allow", purpose=("marketing",), consent="email"),
        Rule("marketing", "mask", mask="email"),
    )
    assert email.rules[1].needs == frozenset({"consent:email"})
    assert policy_set.masks_used() == frozenset({"email"})


def test_policy_set_is_immutable() -> None:
    policy_set = parse_policy_text(GOOD, "policy.toml")
    with pytest.raises(TypeError):
        policy_set.policies["x"] = policy_set.policies["authenticated"]  # type: ignore[index]


def test_shipped_default_loads_and_is_clean() -> None:
    policy_set = load_default_policy()
    assert policy_set.roles == (
        "sales",
        "sales_manager",
        "service",
        "marketing",
        "security",
        "privacy",
        "steward",
    )
    assert set(policy_set.policies) == {
        "authenticated",
        "customer.name",
        "customer.email",
        "customer.phone",
        "customer.nationalId",
        "customer.address",
        "customer.lifetimeValue",
        "customer.orders",
        "customer.tickets",
        "customer.segment",
        "opportunity.owned",
        "audit.read",
        "audit.ack",
        "consent.edit",
        "customer.followups",
        "rights.report",
        "rights.erase",
        "rights.restrict",
        "rights.requests",
        "quality.read",
    }
    assert policy_set.warnings == ()
    assert policy_set.masks_used() <= MASK_NAMES - {"hash"}
    assert load_policy_file(DEFAULT_POLICY_PATH) == policy_set


def test_load_policy_file_reads_a_path(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(GOOD, encoding="utf-8")
    assert set(load_policy_file(path).policies) == {"authenticated", "customer.email"}
    assert load_policy_file(str(path)).source == str(path)


def test_missing_file_is_a_policy_file_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(PolicyFileError, match=r"nope\.toml: cannot read policy file"):
        load_policy_file(missing)


# -- each kind of error ----------------------------------------------------------------


def email_rule(index: int, old: str, new: str) -> str:
    """GOOD with one rule of customer.email edited."""
    lines = GOOD.splitlines(keepends=True)
    line = EMAIL_RULE_LINES[index] - 1
    assert old in lines[line]
    lines[line] = lines[line].replace(old, new)
    return "".join(lines)


@pytest.mark.parametrize(
    ("index", "old", "new", "problem"),
    [
        (
            0,
            'role = "sales"',
            'role = "salse"',
            "unknown role 'salse' (roles: marketing, sales, or *)",
        ),
        (1, 'effect = "allow"', 'effect = "alow"', "bad effect 'alow'"),
        (1, 'effect = "allow"', 'effect = "mask(email"', "bad effect 'mask(email'"),
        (1, 'effect = "allow"', 'effect = "Allow"', "bad effect 'Allow'"),
        (2, "mask(email)", "mask(emial)", "unknown mask 'emial' (masks: address, email, hash"),
        (2, "mask(email)", "mask()", "unknown mask ''"),
        (1, "consent =", "consents =", "unknown key 'consents'"),
        (1, '"email" }', '"emial" }', "unknown consent channel 'emial' (consent_channels: email)"),
        (
            1,
            '["marketing"]',
            '["marketting"]',
            "unknown purpose 'marketting' (purposes: marketing)",
        ),
        (1, '["marketing"]', "[]", "'purpose' must be a non-empty list"),
        (1, '["marketing"]', '"marketing"', "'purpose' must be a non-empty list"),
        (2, '["read"]', '["write"]', "unknown verb 'write' (verbs: edit, read)"),
        (2, '["read"]', "[]", "'verb' must be a non-empty list"),
        (0, 'role = "sales", ', "", "'role' is missing"),
        (0, ', effect = "allow"', "", "'effect' is missing"),
        (0, 'effect = "allow"', 'effect = "allow", owner = false', "'owner' can only be true"),
        (0, 'effect = "allow"', 'effect = "allow", owner = "yes"', "'owner' can only be true"),
        (0, 'effect = "allow"', "effect = true", "bad effect True (allow, deny or mask(<name>))"),
        (0, 'role = "sales"', "role = 1", "bad role 1"),
    ],
)
def test_rule_errors_name_policy_rule_and_line(
    index: int, old: str, new: str, problem: str
) -> None:
    message = error_for(email_rule(index, old, new))
    prefix = f"policy.toml:{EMAIL_RULE_LINES[index]}: policy 'customer.email' rules[{index}]: "
    assert message.startswith(prefix), message
    assert problem in message


def test_error_carries_structured_location() -> None:
    with pytest.raises(PolicyFileError) as info:
        parse(email_rule(2, "mask(email)", "mask(bogus)"))
    error = info.value
    assert (error.source, error.line, error.policy, error.rule) == (
        "policy.toml",
        17,
        "customer.email",
        "rules[2]",
    )
    assert error.problem.startswith("unknown mask 'bogus'")


def test_rule_that_is_not_a_table() -> None:
    text = GOOD.replace('rules = [{ role = "*", effect = "allow" }]', 'rules = ["allow"]')
    message = error_for(text)
    assert message.startswith("policy.toml:7: policy 'authenticated' rules[0]: a rule must be")


def test_empty_rules() -> None:
    text = GOOD.replace('rules = [{ role = "*", effect = "allow" }]', "rules = []")
    message = error_for(text)
    assert message.startswith("policy.toml:7: policy 'authenticated': 'rules' must be a non-empty")


def test_missing_rules() -> None:
    text = GOOD.replace('rules = [{ role = "*", effect = "allow" }]', "")
    assert error_for(text) == "policy.toml:7: policy 'authenticated': 'rules' is missing"


def test_unknown_policy_key() -> None:
    text = GOOD.replace('description = "Contact email"', 'descripton = "Contact email"')
    message = error_for(text)
    assert message.startswith(
        f"policy.toml:{EMAIL_HEADER_LINE}: policy 'customer.email': unknown key 'descripton'"
    )


def test_unquoted_dotted_policy_name_gets_a_hint() -> None:
    text = GOOD.replace('[policy."customer.email"]', "[policy.customer.email]")
    message = error_for(text)
    assert message.startswith(f"policy.toml:{EMAIL_HEADER_LINE}: policy 'customer': unknown key")
    assert 'must be quoted: [policy."customer.email"]' in message


def test_bad_policy_name() -> None:
    text = GOOD.replace('[policy."customer.email"]', '[policy."customer email"]')
    assert "policy 'customer email': a policy name starts with a letter" in error_for(text)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("version = 1", "version = 2", "policy.toml:1: unsupported version 2"),
        ("version = 1", 'version = "1"', "policy.toml:1: 'version' must be given as an integer"),
        ("version = 1", "version = true", "policy.toml:1: 'version' must be given as an integer"),
        ("version = 1\n", "", "policy.toml: 'version' must be given as an integer"),
        (
            "version = 1",
            "version = 1\nowner = 'me'",
            "policy.toml:2: unknown top-level key 'owner'",
        ),
        (
            'roles = ["sales", "marketing"]',
            "roles = []",
            "policy.toml:2: 'roles' must be a non-empty",
        ),
        ('roles = ["sales", "marketing"]', 'roles = ["sales", "sales"]', "lists a name twice"),
        ('roles = ["sales", "marketing"]', 'roles = ["*"]', "holds '*', which is not a name"),
        ('roles = ["sales", "marketing"]', 'roles = ["a b"]', "holds 'a b', which is not a name"),
        (
            'default_policy = "authenticated"',
            'default_policy = "everyone"',
            "policy.toml:5: default_policy 'everyone' is not defined",
        ),
        ('default_policy = "authenticated"\n', "", "'default_policy' must name the policy"),
        ("version = 1", "version = 1\nthings = [", "policy.toml: not valid TOML: "),
    ],
)
def test_top_level_errors(old: str, new: str, expected: str) -> None:
    message = error_for(GOOD.replace(old, new, 1))
    assert message.startswith(expected) or expected in message, message


def test_consent_channel_must_be_declared() -> None:
    text = GOOD.replace('consent_channels = ["email"]\n', "")
    assert "unknown consent channel 'email' (consent_channels: none declared)" in error_for(text)


def test_no_policies() -> None:
    text = GOOD.split("[policy.authenticated]")[0].replace('default_policy = "authenticated"', "")
    assert "no policies" in error_for(text)


def test_toml_syntax_errors_keep_tomllib_line() -> None:
    text = GOOD.replace(
        '{ role = "sales", effect = "allow" },', '{ role = "sales" effect = "allow" },'
    )
    assert "(at line 14" in error_for(text)


# -- rules written as an array of tables --------------------------------------------------

ARRAY_OF_TABLES = """\
version = 1
roles = ["sales"]
default_policy = "open"

[policy.open]
description = "open"

[[policy.open.rules]]
role = "sales"
effect = "allow"

[[policy.open.rules]]
role = "sales"
effect = "mask(nope)"
"""


def test_array_of_tables_rule_line() -> None:
    assert error_for(ARRAY_OF_TABLES).startswith(
        "policy.toml:12: policy 'open' rules[1]: unknown mask 'nope'"
    )


# -- shadow -------------------------------------------------------------------------------

SHADOW = """\
version = 1
roles = ["sales"]
default_policy = "open"

[policy.open]
shadow = true
rules = [{ role = "sales", effect = "allow" }]
shadow_rules = [
  { role = "sales", effect = "mask(redact)" },
  { role = "sails", effect = "deny" },
]
"""


def test_shadow_rules_are_validated_like_rules() -> None:
    assert error_for(SHADOW).startswith(
        "policy.toml:10: policy 'open' shadow_rules[1]: unknown role 'sails'"
    )


def test_shadow_without_shadow_rules() -> None:
    text = SHADOW.split("shadow_rules")[0]
    assert error_for(text) == (
        "policy.toml:5: policy 'open': 'shadow = true' needs a 'shadow_rules' list"
    )


def test_shadow_must_be_boolean() -> None:
    text = SHADOW.replace("shadow = true", 'shadow = "yes"').replace("sails", "sales")
    assert "'shadow' must be true or false" in error_for(text)


def test_shadow_file_parses() -> None:
    policy = parse_policy_text(SHADOW.replace("sails", "sales"), "s.toml").policies["open"]
    assert policy.shadow is True
    assert [rule.effect for rule in policy.shadow_rules] == ["mask", "deny"]


# -- warnings -----------------------------------------------------------------------------


def test_unreachable_rules_are_warned_about() -> None:
    text = GOOD.replace(
        'rules = [{ role = "*", effect = "allow" }]',
        'rules = [\n  { role = "*", effect = "allow" },\n  { role = "sales", effect = "deny" },\n]',
    )
    policy_set = parse_policy_text(text, "policy.toml")
    assert policy_set.warnings == (
        "policy.toml:11: policy 'authenticated' rules[1]: "
        "unreachable, an earlier rule always matches first",
    )


def test_conditional_or_narrower_earlier_rules_leave_later_ones_reachable() -> None:
    policy_set = parse_policy_text(GOOD, "policy.toml")  # marketing allow if ..., then mask
    assert policy_set.warnings == ()


# -- against the schema -------------------------------------------------------------------


def test_validate_against_reports_missing_and_unused() -> None:
    policy_set = load_default_policy()
    schema_names = {"customer.name", "customer.email", "customer.shoeSize"}
    coverage = validate_against(policy_set, schema_names)
    assert coverage.missing == ("customer.shoeSize",)
    assert "authenticated" not in coverage.unused  # the default policy is always used
    assert "customer.phone" in coverage.unused
    assert not coverage.ok
    messages = coverage.messages()
    assert messages[0] == "error: policy 'customer.shoeSize' is used by the schema but not defined"
    assert "warning: policy 'customer.phone' is defined but no field uses it" in messages


def test_validate_against_a_matching_schema_is_ok() -> None:
    policy_set = load_default_policy()
    coverage = validate_against(policy_set, set(policy_set.policies))
    assert coverage.ok
    assert coverage.messages() == ()


def test_restriction_purposes_must_be_declared_purposes() -> None:
    text = """
version = 1
roles = ["a"]
purposes = ["legal"]
default_policy = "p"
restriction_purposes = ["legal", "curiosity"]
[policy.p]
rules = [{ role = "a", effect = "allow" }]
"""
    with pytest.raises(PolicyFileError, match="restriction_purposes: unknown purpose 'curiosity'"):
        parse_policy_text(text, "inline.toml")
    fixed = parse_policy_text(text.replace(', "curiosity"', ""), "inline.toml")
    assert fixed.restriction_purposes == ("legal",)
