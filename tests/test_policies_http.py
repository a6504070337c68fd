"""Authentication and field policies over HTTP: the CONTRACT.md matrix, role by role."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm

from demo.people import DemoWorld, Person
from demo.systems import DemoSystems
from harness import RunningGateway, SourceAdmin, running_gateway
from policies.masks import mask_address, mask_email, mask_name, mask_national_id, mask_phone
from policies.rules import DEFAULT_POLICY_PATH

EVERYTHING = """
query($id: ID!) { customer(id: $id) {
  id name email phone nationalId address lifetimeValue
  orders { id } tickets { id } satisfaction segment consents { channel granted }
} }"""

RAW_FIELDS = ("name", "email", "phone", "nationalId", "address")


def person_with(world: DemoWorld, *, email_consent: bool) -> Person:
    for person in world.persons:
        if len(person.sales_ids) != 1 or not person.contact_id or not person.requester_id:
            continue
        if person.marketing_conflict or "@" not in person.email or not person.email.isascii():
            continue
        contact = next(c for c in world.marketing.contacts if c.id == person.contact_id)
        consents = {c.channel: c.granted for c in contact.consents}
        if consents.get("email") is email_consent:
            return person
    raise AssertionError("no such person in the demo world")


def crm_record(world: DemoWorld, person: Person) -> Any:
    return next(c for c in world.sales.customers if c.id == person.sales_ids[0])


async def cuid(gateway: RunningGateway, person: Person) -> str:
    reply = await gateway.query(
        "query($e: String!) { customerByEmail(email: $e) { id } }", {"e": person.email}
    )
    return str(reply.data["customerByEmail"]["id"])


def expected_row(role: str, raw: dict[str, str], consent: bool, purpose: str) -> dict[str, Any]:
    """CONTRACT.md's matrix: what each role sees of the raw values ("deny" = null + error)."""
    deny = "deny"
    marketing_email = raw["email"] if consent and purpose == "marketing" else deny
    rows: dict[str, dict[str, Any]] = {
        "sales": {
            "name": raw["name"],
            "email": raw["email"],
            "phone": raw["phone"],
            "nationalId": mask_national_id(raw["nationalId"]),
            "address": raw["address"],
            "lifetimeValue": "value",
            "orders": "value",
            "tickets": "value",
            "satisfaction": "value",
            "segment": "value",
            "consents": "value",
        },
        "service": {
            "name": raw["name"],
            "email": raw["email"],
            "phone": raw["phone"],
            "nationalId": mask_national_id(raw["nationalId"]),
            "address": raw["address"],
            "lifetimeValue": deny,
            "orders": "value",
            "tickets": "value",
            "satisfaction": "value",
            "segment": "value",
            "consents": "value",
        },
        "marketing": {
            "name": raw["name"],
            "email": marketing_email,
            "phone": mask_phone(raw["phone"]),
            "nationalId": deny,
            "address": mask_address(raw["address"]),
            "lifetimeValue": "value",
            "orders": deny,
            "tickets": deny,
            "satisfaction": deny,
            "segment": "value",
            "consents": "value",
        },
        "security": {
            "name": mask_name(raw["name"]),
            "email": mask_email(raw["email"]),
            "phone": mask_phone(raw["phone"]),
            "nationalId": mask_national_id(raw["nationalId"]),
            "address": deny,
            "lifetimeValue": deny,
            "orders": deny,
            "tickets": deny,
            "satisfaction": deny,
            "segment": "value",
            "consents": "value",
        },
    }
    return rows[role]


@pytest.mark.parametrize("role", ["sales", "service", "marketing", "security"])
@pytest.mark.parametrize("consent", [True, False])
async def test_the_contract_matrix_role_by_role(
    gateway: RunningGateway, demo_world: DemoWorld, role: str, consent: bool
) -> None:
    person = person_with(demo_world, email_consent=consent)
    crm = crm_record(demo_world, person)
    raw = {
        "name": crm.full_name.strip(),
        "email": crm.email.strip(),
        "phone": crm.phone.strip(),
        "nationalId": crm.national_id,
        "address": crm.address.strip(),
    }
    purpose = {"security": "audit"}.get(role, role)
    reply = await gateway.query(
        EVERYTHING, {"id": await cuid(gateway, person)}, gateway.as_role(role, purpose)
    )
    assert reply.status == 200
    customer = reply.data["customer"]
    denied = {
        e["path"][-1]: e["extensions"]["policy"]
        for e in reply.errors
        if e["extensions"]["code"] == "FORBIDDEN"
    }
    assert all(e["extensions"]["code"] == "FORBIDDEN" for e in reply.errors)
    for field, expected in expected_row(role, raw, consent, purpose).items():
        if expected == "deny":
            assert customer[field] is None, field
            assert field in denied, field
        elif expected == "value":
            assert field not in denied, field
        else:
            assert customer[field] == expected, field
            assert field not in denied
    body = orjson.dumps(reply.body).decode()
    for field, value in raw.items():
        shown = expected_row(role, raw, consent, purpose)[field]
        if shown != value:
            assert value not in body, f"raw {field} leaked for {role}"


async def test_marketing_email_needs_the_marketing_purpose(
    gateway: RunningGateway, demo_world: DemoWorld
) -> None:
    person = person_with(demo_world, email_consent=True)
    carol = {
        "authorization": "Bearer " + gateway.token("carol", ["marketing"], ["marketing", "sales"])
    }
    query = "query($id: ID!) { customer(id: $id) { email } }"
    variables = {"id": await cuid(gateway, person)}
    for_marketing = await gateway.query(query, variables, {**carol, "x-purpose": "marketing"})
    for_sales = await gateway.query(query, variables, {**carol, "x-purpose": "sales"})
    assert for_marketing.data["customer"]["email"]
    assert for_sales.data["customer"]["email"] is None
    assert for_sales.errors[0]["extensions"] == {"code": "FORBIDDEN", "policy": "customer.email"}


async def test_a_denied_field_is_never_fetched(
    gateway: RunningGateway, sources: SourceAdmin, demo_world: DemoWorld
) -> None:
    person = person_with(demo_world, email_consent=True)
    variables = {"id": await cuid(gateway, person)}
    sales_before = gateway.source_calls("sales")
    reply = await gateway.query(
        "query($id: ID!) { customer(id: $id) { nationalId orders { id } tickets { id } } }",
        variables,
        gateway.as_role("marketing"),
    )
    assert sorted(e["extensions"]["policy"] for e in reply.errors) == [
        "customer.nationalId",
        "customer.orders",
        "customer.tickets",
    ]
    assert gateway.source_calls("sales") == sales_before
    assert await sources.calls("service") == 0
    allowed = await gateway.query(
        "query($id: ID!) { customer(id: $id) { tickets { id } } }", variables
    )
    assert not allowed.errors
    assert await sources.calls("service") == 1


async def test_lists_of_customers_are_governed_per_customer(
    gateway: RunningGateway, demo_world: DemoWorld
) -> None:
    reply = await gateway.query(
        "{ customers(first: 50) { edges { node { id email consents { channel granted } } } } }",
        headers=gateway.as_role("marketing"),
    )
    nodes = [edge["node"] for edge in reply.data["customers"]["edges"]]
    for node in nodes:
        granted = any(c["channel"] == "email" and c["granted"] for c in node["consents"] or [])
        assert (node["email"] is not None) == granted
    forbidden = [e for e in reply.errors if e["extensions"]["code"] == "FORBIDDEN"]
    assert len(forbidden) == sum(1 for node in nodes if node["email"] is None)


async def test_ownership_rep_sees_own_accounts_manager_sees_all(
    gateway: RunningGateway, demo_world: DemoWorld
) -> None:
    persons = [p for p in demo_world.persons if len(p.sales_ids) == 1 and p.owner_rep][:60]
    query = "query($id: ID!) { customer(id: $id) { opportunities { id owner } } }"
    rep = "rep-01"
    own = next(p for p in persons if p.owner_rep == rep)
    other = next(p for p in persons if p.owner_rep != rep)
    as_rep = {"authorization": "Bearer " + gateway.token(rep, ["sales"], ["sales"])}
    mine = await gateway.query(query, {"id": await cuid(gateway, own)}, as_rep)
    theirs = await gateway.query(query, {"id": await cuid(gateway, other)}, as_rep)
    manager = await gateway.query(
        query, {"id": await cuid(gateway, other)}, gateway.as_role("sales_manager")
    )
    assert not mine.errors
    assert mine.data["customer"]["opportunities"] is not None
    assert theirs.data["customer"]["opportunities"] is None
    assert theirs.errors[0]["extensions"]["policy"] == "opportunity.owned"
    assert not manager.errors
    assert manager.data["customer"]["opportunities"] is not None


def _token(**overrides: Any) -> str:
    claims = {
        "sub": "mallory",
        "roles": ["sales"],
        "purpose": ["sales"],
        "iss": "c360-demo",
        "aud": "c360",
        "exp": int(time.time()) + 600,
    }
    key = overrides.pop("key", "c360-demo-signing-secret-not-for-production")
    algorithm = overrides.pop("algorithm", "HS256")
    headers = overrides.pop("headers", {"kid": "dev"})
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def _alg_none() -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")

    claims = {
        "sub": "mallory",
        "roles": ["sales"],
        "iss": "c360-demo",
        "aud": "c360",
        "exp": int(time.time()) + 600,
    }
    return f"{part({'alg': 'none', 'typ': 'JWT', 'kid': 'dev'})}.{part(claims)}."


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        ("", 401),
        ("Basic YWxpY2U6c2VjcmV0", 401),
        ("Bearer not.a.jwt", 401),
        ("Bearer " + _token(exp=int(time.time()) - 3600), 401),
        ("Bearer " + _token(nbf=int(time.time()) + 3600), 401),
        ("Bearer " + _token(key="a-different-secret-of-at-least-32-bytes!"), 401),
        ("Bearer " + _token(aud="someone-else"), 401),
        ("Bearer " + _token(iss="https://evil.example"), 401),
        ("Bearer " + _token(sub=None), 401),
        ("Bearer " + _token(roles=None, purpose=None), 401),
        ("Bearer " + _token(headers={"kid": "unknown"}), 401),
        ("Bearer " + _alg_none(), 401),
    ],
)
async def test_bad_credentials_get_401_and_no_data(
    gateway: RunningGateway, authorization: str, status: int
) -> None:
    reply = await gateway.query(
        "{ customers(first: 1) { edges { node { name } } } }",
        headers={"authorization": authorization},
    )
    assert reply.status == status
    assert "data" not in reply.body
    assert reply.codes() == ["UNAUTHENTICATED"]
    assert reply.headers.get("www-authenticate") == "Bearer"


async def test_a_purpose_the_token_does_not_allow_is_403(gateway: RunningGateway) -> None:
    headers = {**gateway.as_role("sales"), "x-purpose": "marketing"}
    reply = await gateway.query("{ customers(first: 1) { edges { cursor } } }", headers=headers)
    assert reply.status == 403
    assert reply.codes() == ["FORBIDDEN"]
    assert "data" not in reply.body


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


async def test_rs256_and_es256_with_static_keys_and_no_algorithm_confusion(
    demo_systems: DemoSystems, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_pem, ec_pem = _public_pem(rsa_key), _public_pem(ec_key)
    overrides = {"auth.public_keys": {"rsa-1": rsa_pem, "ec-1": ec_pem}}
    async with running_gateway(demo_systems, tmp_path, overrides) as gateway:
        query = "{ customers(first: 1) { edges { node { name } } } }"

        async def status(token: str) -> int:
            return (await gateway.query(query, headers={"authorization": f"Bearer {token}"})).status

        assert await status(_token(key=rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})) == 200
        assert await status(_token(key=ec_key, algorithm="ES256", headers={"kid": "ec-1"})) == 200
        # the RSA public key used as an HMAC secret: refused
        # the RSA public key used as an HMAC secret (the classic confusion): refused

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).decode().rstrip("=")

        header = b64(orjson.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}))
        payload = b64(
            orjson.dumps(
                {
                    "sub": "m",
                    "roles": ["sales"],
                    "iss": "c360-demo",
                    "aud": "c360",
                    "exp": int(time.time()) + 60,
                }
            )
        )
        signature = hmac.new(rsa_pem.encode(), f"{header}.{payload}".encode(), hashlib.sha256)
        confused = f"{header}.{payload}.{b64(signature.digest())}"
        assert await status(confused) == 401
        # an RSA-signed token claiming the EC key's id: refused
        assert await status(_token(key=rsa_key, algorithm="RS256", headers={"kid": "ec-1"})) == 401


async def test_jwks_is_fetched_and_refreshed_on_an_unknown_kid(
    demo_systems: DemoSystems, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    second = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    published = {"keys": [{**orjson.loads(RSAAlgorithm.to_jwk(rsa_key.public_key())), "kid": "k1"}]}
    fetches = 0

    async def jwks(request: web.Request) -> web.Response:
        nonlocal fetches
        fetches += 1
        return web.json_response(published)

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    overrides = {"auth.jwks_url": f"http://127.0.0.1:{port}/jwks.json"}
    try:
        async with running_gateway(demo_systems, tmp_path, overrides) as gateway:
            gateway.gateway.authenticator.JWKS_MIN_REFRESH_S = 0  # rotate within the test
            query = "{ customers(first: 1) { edges { cursor } } }"
            first = _token(key=rsa_key, algorithm="RS256", headers={"kid": "k1"})
            ok = await gateway.query(query, headers={"authorization": f"Bearer {first}"})
            again = await gateway.query(query, headers={"authorization": f"Bearer {first}"})
            assert ok.status == 200 and again.status == 200
            assert fetches == 1  # cached
            published["keys"].append(
                {**orjson.loads(RSAAlgorithm.to_jwk(second.public_key())), "kid": "k2"}
            )
            rotated = _token(key=second, algorithm="RS256", headers={"kid": "k2"})
            after = await gateway.query(query, headers={"authorization": f"Bearer {rotated}"})
            assert after.status == 200
            assert fetches == 2
    finally:
        await runner.cleanup()


POLICY_TEMPLATE = DEFAULT_POLICY_PATH.read_text(encoding="utf-8")


async def test_policy_reload_and_a_broken_file_keeps_the_old_rules(
    demo_systems: DemoSystems, tmp_path: Path
) -> None:
    policy_file = tmp_path / "policies.toml"
    policy_file.write_text(POLICY_TEMPLATE, encoding="utf-8")
    overrides = {"policies.file": str(policy_file)}
    query = "{ customers(first: 1) { edges { node { name } } } }"
    async with running_gateway(demo_systems, tmp_path, overrides) as gateway:
        before = await gateway.query(query)
        assert before.data["customers"]["edges"][0]["node"]["name"]
        header = '[policy."customer.name"]\ndescription = "Customer.name"\nrules = [\n'
        stricter = POLICY_TEMPLATE.replace(
            header + '  { role = "sales", effect = "allow" },',
            header + '  { role = "sales", effect = "mask(name)" },',
        )
        assert stricter != POLICY_TEMPLATE
        policy_file.write_text(stricter, encoding="utf-8")
        assert gateway.gateway.reload_policies()
        masked = await gateway.query(query)
        name = masked.data["customers"]["edges"][0]["node"]["name"]
        assert name != before.data["customers"]["edges"][0]["node"]["name"]
        assert "*" in name
        policy_file.write_text(stricter.replace("mask(name)", "mask(shoe_size)"), encoding="utf-8")
        assert not gateway.gateway.reload_policies()
        still = await gateway.query(query)
        assert still.data == masked.data


async def test_shadow_rules_are_logged_not_enforced(
    demo_systems: DemoSystems, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    policy_file = tmp_path / "policies.toml"
    shadowed = POLICY_TEMPLATE.replace(
        '[policy."customer.phone"]\n',
        '[policy."customer.phone"]\nshadow = true\n'
        'shadow_rules = [{ role = "sales", effect = "mask(phone)" }]\n',
    )
    assert shadowed != POLICY_TEMPLATE
    policy_file.write_text(shadowed, encoding="utf-8")
    async with running_gateway(
        demo_systems, tmp_path, {"policies.file": str(policy_file)}
    ) as gateway:
        with caplog.at_level(logging.INFO, logger="c360.policy"):
            reply = await gateway.query("{ customers(first: 3) { edges { node { phone } } } }")
    phones = [edge["node"]["phone"] for edge in reply.data["customers"]["edges"]]
    assert all(phone and "*" not in phone for phone in phones)  # enforced: allow
    shadow_lines = [r for r in caplog.records if r.getMessage().startswith("shadow policy")]
    assert len(shadow_lines) == 3
    assert shadow_lines[0].shadow == "mask"  # type: ignore[attr-defined]
    for record in shadow_lines:
        assert not any(phone in str(record.__dict__) for phone in phones)


async def test_no_raw_value_in_any_log_line(
    gateway: RunningGateway,
    demo_world: DemoWorld,
    sources: SourceAdmin,
    caplog: pytest.LogCaptureFixture,
) -> None:
    person = person_with(demo_world, email_consent=False)
    crm = crm_record(demo_world, person)
    variables = {"id": await cuid(gateway, person)}
    with caplog.at_level(logging.DEBUG):
        await sources.fault("service", "garbage")
        for role in ("security", "marketing", "service", "sales"):
            await gateway.query(EVERYTHING, variables, gateway.as_role(role))
        await gateway.query('{ customerByEmail(email: "' + person.email + '") { shoeSize } }')
    logged = "\n".join(str(r.__dict__) for r in caplog.records)
    assert caplog.records  # the failing source was logged
    for raw in (
        crm.national_id,
        crm.email.strip(),
        person.email,
        crm.phone.strip(),
        crm.address.strip(),
    ):
        assert raw not in logged
