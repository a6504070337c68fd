"""The `c360` command line. Errors are one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import orjson

from connectors.base import SourceUnavailable
from gateway.config import Config, ConfigError, load_config, parse_config
from gateway.logs import configure_logging

log = logging.getLogger("c360.cli")
DEFAULT_CONFIG = Path("c360.toml")


class CliError(Exception):
    """A failure to report as one line, with exit status 1."""


def _graph(args: argparse.Namespace) -> Any:
    """The built graph of the config (`--config`, when that file exists), or the demo's."""
    from demo import GRAPH_FILE
    from resolvers.declaration import DeclarationError
    from resolvers.graphs import load_graph

    config_path = getattr(args, "config", None)
    paths: tuple[Path, ...] = (GRAPH_FILE,)
    if config_path and Path(config_path).exists():
        paths = _load(args).graph_files or paths
    try:
        return load_graph(*paths)
    except DeclarationError as error:
        raise CliError(str(error)) from error


def _schema_sdl(args: argparse.Namespace) -> str:
    from resolvers.schema import build_schema

    return build_schema(_graph(args)).as_str() + "\n"


def run_fast(main: Coroutine[Any, Any, int]) -> int:
    """Run a server on uvloop when it is installed (it is a dependency; the fallback keeps
    `pip install` on other platforms working)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def cmd_schema(args: argparse.Namespace) -> int:
    sdl = _schema_sdl(args)
    target = Path(args.output if args.action == "export" else args.file)
    if args.action == "export":
        if args.output == "-":
            sys.stdout.write(sdl)
        else:
            target.write_text(sdl, encoding="utf-8")
            print(f"wrote {target}")
        return 0
    if not target.exists() or target.read_text(encoding="utf-8") != sdl:
        print(f"{target} is out of date: run `c360 schema export -o {target}`", file=sys.stderr)
        return 1
    print(f"{target} is up to date")
    return 0


# Where `c360 demo` (run from the checkout, its default --data-dir) writes its config.
DEMO_CONFIG = Path("data") / "c360.toml"


def _load(args: argparse.Namespace) -> Config:
    """The config `--config` names; left at its default and absent, the demo's when
    `c360 demo` has written one, so `c360 token` works beside a running demo."""
    path = Path(args.config)
    if path == DEFAULT_CONFIG and not path.exists():
        if DEMO_CONFIG.exists():
            return load_config(DEMO_CONFIG)
        raise CliError(
            f"config: no file at {path} (nor {DEMO_CONFIG}, written by `c360 demo`): "
            "pass --config FILE"
        )
    return load_config(path)


async def _identity(args: argparse.Namespace) -> int:
    from gateway.app import Gateway

    gateway = Gateway(_load(args))
    try:
        await gateway.store.create()
        if args.action == "sync":
            report = await gateway.sync(full=args.full)
            for name, stats in report.systems.items():
                status = f"error: {stats.error}" if stats.error else "ok"
                print(
                    f"{name}: scanned {stats.scanned}, linked {stats.linked}, "
                    f"new customers {stats.new_customers}, issues {stats.issues} ({status})"
                )
            print(f"customers: {len(gateway.identity)}")
            return 1 if any(stats.error for stats in report.systems.values()) else 0
        issues = await gateway.store.issues()
        if args.json:
            for issue in issues:
                sys.stdout.write(orjson.dumps(dataclasses.asdict(issue)).decode() + "\n")
        else:
            for issue in issues:
                where = f"{issue.system}:{issue.system_id}"
                print(f"{issue.kind:<10} {where} -> {issue.cuid}  {issue.detail}")
            print(f"{len(issues)} records need attention")
        return 0
    finally:
        await gateway.stop()


def cmd_subject(args: argparse.Namespace) -> int:
    from gateway import rights

    if args.action == "erase" and not args.confirm:
        raise CliError("subject erase deletes records: add --confirm")
    keys = {"email": args.email, "phone": args.phone, "customer": args.customer}
    result = asyncio.run(rights.run(_load(args), args.action, keys))
    if result["errors"]:
        first = result["errors"][0]
        code = (first.get("extensions") or {}).get("code", "ERROR")
        raise CliError(f"{code}: {first['message']}")
    data = result["data"]["subjectReport" if args.action == "report" else "subjectErase"]
    if args.action == "erase":
        print(rights.dumps(data))
        if data["manual"]:
            print(f"follow up by hand in: {', '.join(data['manual'])}", file=sys.stderr)
        print(
            "running gateways read the crosswalk again on SIGHUP (kill -HUP <pid>)",
            file=sys.stderr,
        )
        return 1 if data["failed"] else 0
    if args.html:
        rights.write_html(data, Path(args.html))
    if args.json:
        print(rights.dumps(data))
        return 0
    print(f"customer {data['customer']} (generated {data['generatedAt']})")
    for record in data["records"]:
        print(f"  {record['system']}.{record['entity']} {record['key']}")
        for value in record["values"]:
            print(f"    {value['name']}: {value['value']}")
    print(f"accesses: {len(data['accesses'])}")
    for access in data["accesses"]:
        fields = ", ".join(f"{f['field']}={f['decision']}" for f in access["fields"])
        print(f"  {access['at']} {access['subject']} {access['purpose']} {fields}")
    return 0


def cmd_identity(args: argparse.Namespace) -> int:
    if args.action in ("export", "import"):
        return asyncio.run(_identity_backup(args))
    return asyncio.run(_identity(args))


def _write_private(path: Path, lines: Any) -> None:
    """Write a file readable by its owner only, whole or not at all (a temporary file
    renamed over it)."""
    partial = path.with_name(path.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as out:
            for line in lines:
                out.write(line)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


async def _identity_backup(args: argparse.Namespace) -> int:
    """`c360 identity export FILE` / `import FILE [--replace]`: the crosswalk as JSON lines
    (keyed hashes only, never an email or phone); `-` is stdout / stdin."""
    import datetime as dt

    from connectors.identity.backup import (
        BackupError,
        Crosswalk,
        export_lines,
        parse_lines,
        read_crosswalk,
    )
    from connectors.identity.store import StoreNotEmpty
    from gateway.app import Gateway

    gateway = Gateway(_load(args))
    try:
        await gateway.store.create()
        if args.action == "export":
            try:
                crosswalk = await read_crosswalk(gateway.store)
            except BackupError as error:
                raise CliError(f"identity export: {error}") from error
            lines = export_lines(crosswalk, gateway.keys, dt.datetime.now(dt.UTC))
            if args.file == "-":
                sys.stdout.buffer.writelines(lines)
                sys.stdout.buffer.flush()
            else:
                await asyncio.to_thread(_write_private, Path(args.file), lines)
            print(f"exported {crosswalk.summary()} to {args.file}", file=sys.stderr)
            return 0

        def parse() -> Crosswalk:
            if args.file == "-":
                return parse_lines(sys.stdin.buffer, gateway.keys)
            with Path(args.file).open("rb") as source:
                return parse_lines(source, gateway.keys)

        try:
            crosswalk = await asyncio.to_thread(parse)
        except BackupError as error:
            raise CliError(f"{args.file}: {error}") from error
        try:
            await gateway.store.restore(
                crosswalk.links,
                crosswalk.cursors,
                crosswalk.issues,
                crosswalk.quality_runs,
                crosswalk.tombstones,
                crosswalk.restrictions,
                replace=args.replace,
            )
        except StoreNotEmpty as error:
            raise CliError(
                "identity import: the crosswalk store is not empty; --replace replaces "
                "everything it holds"
            ) from error
        print(f"imported {crosswalk.summary()}" + (" (replaced)" if args.replace else ""))
        return 0
    finally:
        await gateway.stop()


async def _quality(args: argparse.Namespace) -> int:
    from gateway.app import Gateway
    from gateway.quality import render_text

    if args.worst < 0:
        raise CliError("--worst: 0 or more")
    gateway = Gateway(_load(args))
    try:
        await gateway.store.create()
        await gateway.reload_identity()
        if not len(gateway.identity):
            raise CliError("the crosswalk is empty: run `c360 identity sync` first")
        report = await gateway.quality(worst=args.worst)
    finally:
        await gateway.stop()
    if args.json:
        sys.stdout.write(orjson.dumps(report.as_dict()).decode() + "\n")
    else:
        print(render_text(report))
    return 1 if any(system.error for system in report.systems.values()) else 0


def cmd_quality(args: argparse.Namespace) -> int:
    return asyncio.run(_quality(args))


async def _started(gateway: Any) -> None:
    """Start the gateway, or close what its start opened and raise why it could not."""
    try:
        await gateway.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await gateway.stop()
        raise


async def _serve(
    config: Config, host: str, port: int, config_path: Path | None = None, tls: Any = None
) -> int:
    from gateway.app import Gateway, build_app
    from gateway.serving import bind, settle_heap, start_server
    from gateway.telemetry import configure_telemetry

    sock = bind(host, port)
    gateway = Gateway(config, config_path, configure_telemetry("c360", os.environ))
    await _started(gateway)  # before serving: a ConfigError is one line, not a traceback
    running = await start_server(build_app(config, gateway), sock, tls)
    settle_heap()
    reload_on_sighup(gateway, running)
    log.warning("serving", extra={"url": running.url, "customers": len(gateway.identity)})
    await running.task
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args)
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    from gateway.tls import ServerTLS

    # TLS when given a certificate and key (flags over [server] tls_cert/tls_key);
    # otherwise plain HTTP, for running behind a TLS-terminating proxy.
    tls = ServerTLS.resolve(
        args.tls_cert, args.tls_key, config.raw.get("server", {}), Path(args.config).parent
    )
    if args.workers > 1:
        import uvicorn

        from gateway.app import preflight
        from gateway.audit.writers import WORKERS_ENV
        from gateway.serving import GatewayHttpProtocol, uvicorn_tls_options

        async def checked() -> int:
            await preflight(config)  # ConfigError: one line, before any worker starts
            return 0

        run_fast(checked())
        # Each worker process builds its own app from the same file, and writes an access
        # log chain of its own (`<chain>-w<k>`: gateway/audit/writers.py).
        os.environ["C360_CONFIG"] = str(Path(args.config).resolve())
        os.environ[WORKERS_ENV] = str(args.workers)
        uvicorn.run(
            "gateway.serving:create_hsts_app" if tls else "gateway.asgi:create_app",
            factory=True,
            host=host,
            port=port,
            workers=args.workers,
            log_config=None,
            http=GatewayHttpProtocol,
            **uvicorn_tls_options(tls),
        )
        return 0
    with contextlib.suppress(KeyboardInterrupt):
        return run_fast(_serve(config, host, port, Path(args.config), tls))
    return 0


async def _demo(args: argparse.Namespace, data_dir: Path) -> int:
    from demo.banner import demo_banner, demo_tokens
    from demo.ca import DemoCertificates
    from gateway.app import Gateway, build_app
    from gateway.demo import DemoOptions, demo_config, demo_systems, demo_tls_overrides, to_toml
    from gateway.serving import bind, settle_heap, start_server
    from gateway.telemetry import configure_telemetry
    from gateway.tls import ServerTLS

    sock = bind("127.0.0.1", args.port)
    # --tls: a fresh throwaway CA and certificates under the data dir, on every run.
    certificates = DemoCertificates.create(data_dir / "tls") if args.tls else None
    options = DemoOptions(
        data_dir=data_dir,
        latency_ms=args.latency_ms,
        down=tuple(args.down or ()),
        sales_dsn=args.sales_dsn,
        tls_dir=certificates.ca.directory if certificates else None,
    )
    async with demo_systems(options) as systems:
        overrides = {"cache.url": args.cache_url} if args.cache_url else {}
        tls_notes: list[str] = []
        if certificates is not None:
            tls_overrides, tls_notes = await demo_tls_overrides(
                certificates, systems.endpoints, args.port
            )
            overrides |= tls_overrides
        data = demo_config(systems.endpoints, port=args.port, overrides=overrides)
        config_path = data_dir / "c360.toml"
        config_path.write_text(to_toml(data), encoding="utf-8")
        config = parse_config(data, base_dir=data_dir)
        tls = ServerTLS.from_server_table(config.raw.get("server", {}), data_dir)
        gateway = Gateway(config, config_path, configure_telemetry("c360", os.environ))
        await _started(gateway)  # before serving, as `c360 serve` does
        running = await start_server(build_app(config, gateway), sock, tls)
        settle_heap()
        reload_on_sighup(gateway, running)
        print(demo_banner(running.url, len(gateway.identity), systems.endpoints, options.down))
        if tls_notes:
            print("\n".join(tls_notes))
        print(demo_tokens(config))
        await running.task
    return 0


def reload_on_sighup(gateway: Any, running: Any) -> None:
    """SIGHUP re-reads the keys and the policy file atomically (a broken file is refused),
    and the TLS certificate the gateway serves."""

    def reload() -> None:
        gateway.reload()
        running.reload_tls()

    with contextlib.suppress(NotImplementedError, RuntimeError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)


def cmd_demo(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(KeyboardInterrupt):
        return run_fast(_demo(args, data_dir))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from gateway.auth import mint_token

    config = _load(args)
    print(
        mint_token(
            config.auth,
            args.sub,
            args.role,
            args.purpose or [],
            ttl_s=args.ttl,
            department=args.department,
            amr=args.amr or None,
        )
    )
    return 0


def _policy_set(args: argparse.Namespace) -> Any:
    from policies.rules import PolicyFileError, load_default_policy, load_policy_file

    try:
        if getattr(args, "file", None):
            return load_policy_file(args.file)
        if Path(args.config).exists():
            from gateway.app import Gateway

            return Gateway(_load(args)).policies
        return load_default_policy()
    except PolicyFileError as error:
        raise CliError(str(error)) from error


def cmd_graph(args: argparse.Namespace) -> int:
    """`c360 graph check [FILE]`: the declaration alone, and with a config present, its
    bindings against the configured sources and its policies against the policy file."""
    from connectors.base import ConnectorConfigError
    from connectors.registry import build_connector
    from gateway.app import connector_settings
    from resolvers.bindings import BindingError, check_bindings
    from resolvers.declaration import DeclarationError, load_declaration
    from resolvers.graphs import load_graph

    config = _load(args) if Path(args.config).exists() else None
    if args.file:
        paths = tuple(Path(name) for name in args.file)
    else:
        from demo import GRAPH_FILE

        paths = (config.graph_files if config else ()) or (GRAPH_FILE,)
    try:
        declaration = load_declaration(*paths)
        load_graph(*paths)
        if config is not None:
            connectors = {
                name: build_connector(name, connector_settings(table))
                for name, table in config.sources.items()
            }
            check_bindings(declaration, {n: c.entities() for n, c in connectors.items()})
    except (DeclarationError, BindingError, ConnectorConfigError, ValueError) as error:
        raise CliError(str(error)) from error
    fields = sum(len(t.fields) for t in declaration.types.values())
    names = ", ".join(map(str, paths))
    print(
        f"{names}: {len(declaration.types)} types, {len(declaration.enums)} enums, "
        f"{fields} fields, {len(declaration.lookups)} lookups, valid"
        + (" (bindings checked against the config's sources)" if config else "")
    )
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    from policies.engine import explain
    from policies.rules import validate_against
    from resolvers.schema import schema_policies

    policy_set = _policy_set(args)
    graph = _graph(args)
    if args.action == "check":
        coverage = validate_against(policy_set, schema_policies(graph))
        for message in coverage.messages():
            print(message, file=sys.stderr)
        if not coverage.ok:
            return 1
        print(f"{args.file or 'policy file'}: {len(policy_set.policies)} policies, valid")
        return 0
    try:
        rows = {row.policy: row for row in explain(policy_set, args.role, args.verb)}
    except ValueError as error:
        raise CliError(str(error)) from error
    fields = [
        (f"Customer.{name}", policy) for name, policy in graph.policies.items() if policy in rows
    ]
    if args.json:
        for field, policy in fields:
            entry = {"field": field, **rows[policy].as_dict()}
            sys.stdout.write(orjson.dumps(entry).decode() + "\n")
        return 0
    roles = list(rows[fields[0][1]].cells) if fields else []
    table = [("field", "policy", *roles)] + [
        (field, policy, *rows[policy].cells.values()) for field, policy in fields
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


async def _invalidate(args: argparse.Namespace) -> int:
    import aiohttp

    from gateway.invalidation import signed_headers

    config = _load(args)
    if config.cache is None or not config.cache.webhook_secrets:
        raise CliError("cache.webhook_secrets: no secret to sign the invalidation with")
    secret_id, secret = next(iter(config.cache.webhook_secrets.items()))
    body = orjson.dumps({"source": args.source, "entity": args.entity, "keys": args.key})
    url = args.url or f"http://{config.server.host}:{config.server.port}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.post(
                url.rstrip("/") + "/cache/invalidate",
                data=body,
                headers=signed_headers(secret_id, secret, body),
            ) as response,
        ):
            answer = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        raise CliError(f"cannot reach the gateway at {url}: {error}") from error
    if response.status != 200:
        raise CliError(f"invalidation refused ({response.status}): {answer.get('error')}")
    print(f"evicted {answer['evicted']} of {answer['keys']} keys")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    return asyncio.run(_invalidate(args))


def _audit_config(args: argparse.Namespace) -> Config:
    if args.data_dir:
        return load_config(Path(args.data_dir) / "c360.toml")
    return _load(args)


def _parse_time(value: str | None, option: str) -> Any:
    import datetime as dt

    if value is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError as error:
        raise CliError(f"{option}: an ISO 8601 time, e.g. 2026-11-25T09:00:00+08:00") from error
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


async def _audit_evidence(args: argparse.Namespace, config: Config, sink: Any) -> int:
    """verify, checkpoint, prove, prune, public-key (gateway/audit/commands.py)."""
    from gateway.audit import commands
    from gateway.audit.checkpoint import CheckpointError

    try:
        if args.action == "verify":
            return await commands.verify_log(sink, config.audit, args.checkpoint)
        if args.action == "checkpoint":
            return await commands.write_checkpoint(sink, config.audit, args.chain or [])
        if args.action == "prove":
            return await commands.prove(
                sink, config.audit, args.request_id, args.checkpoint, args.old, args.new
            )
        if args.action == "prune":
            return await commands.prune(sink, config.audit, args.before, args.chain or [])
        return commands.public_key(config.audit, args.id)
    except CheckpointError as error:
        raise CliError(str(error)) from error


async def _audit(args: argparse.Namespace) -> int:
    from gateway.audit.sinks import AccessQuery, PostgresSink, SinkUnavailable

    config = _audit_config(args)
    sink = config.audit_sink
    try:
        if args.action == "rebuild":
            if not isinstance(sink, PostgresSink):
                raise CliError("audit rebuild: the JSONL log has no read models to rebuild")
            print(f"rebuilt the read models from {await sink.rebuild_read_models()} records")
            return 0
        if args.action in ("verify", "checkpoint", "prove", "prune", "public-key"):
            return await _audit_evidence(args, config, sink)
        query = AccessQuery(
            customer=args.customer,
            subject=args.subject,
            field=args.field,
            since=_parse_time(args.since, "--since"),
            until=_parse_time(args.until, "--until"),
            first=args.first,
        )
        records = await sink.search(query)
    except SinkUnavailable as error:
        raise CliError(f"the access log is unavailable: {error}") from error
    finally:
        await sink.close()
    for record in records:
        if args.json:
            sys.stdout.write(orjson.dumps(record).decode() + "\n")
            continue
        fields = record.get("fields") or {}
        seen = ", ".join(
            f"{customer}:{name}={decision}"
            for customer, decided in fields.items()
            for name, decision in decided.items()
            if args.field is None or name == args.field
        )
        who = f"{record.get('subject')} ({','.join(record.get('roles') or [])})"
        print(
            f"{record['ts']}  {record.get('kind', 'access'):<6} {who:<24} "
            f"purpose={record.get('purpose')} outcome={record.get('outcome')} "
            f"op={record.get('operation') or '-'}  {seen or record.get('alert') or ''}"
        )
    return 0


def cmd_documents(args: argparse.Namespace) -> int:
    from gateway.documents import DocumentStoreError, add_documents
    from resolvers.schema import build_schema
    from resolvers.upstream import core_schema

    config = _load(args)
    if config.documents.file is None:
        raise CliError("documents.file: no trusted-documents file is configured")
    try:
        added = add_documents(
            config.documents.file,
            [Path(name) for name in args.files],
            core_schema(build_schema(_graph(args))),
        )
    except DocumentStoreError as error:
        raise CliError(str(error)) from error
    for digest, source in added:
        print(f"{digest}  {source}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    import datetime as dt

    from gateway.keys import inventory, rotate

    config = _audit_config(args)
    if args.action == "rotate":
        key = rotate(config, args.which)
        print(f"{args.which}.{key.id}: new lines are encrypted with it; older keys still decrypt")
        return 0
    rows = inventory(config, config.keys, dt.datetime.now(dt.UTC).date())
    if args.json:
        for row in rows:
            sys.stdout.write(orjson.dumps(row.as_dict()).decode() + "\n")
    else:
        width = max(len(row.id) for row in rows)
        for row in rows:
            age = f"{row.age_days} days" if row.age_days is not None else "age unknown"
            print(f"{row.id:<{width}}  {age:<12}  {row.use}")
    old = [row for row in rows if row.too_old]
    for row in old:
        print(
            f"c360: warning: {row.id} is {row.age_days} days old "
            f"(keys.max_age_days = {config.keys.max_age_days}): rotate it",
            file=sys.stderr,
        )
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    return asyncio.run(_audit(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="c360", description="A GraphQL gateway over the customer data of department systems."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the demo department systems and the gateway")
    demo.add_argument("--port", type=int, default=8000, help="the gateway's port (default 8000)")
    demo.add_argument("--data-dir", default="data", help="state: SQLite files, config (./data)")
    demo.add_argument("--latency-ms", type=int, default=0, help="added to every system's answers")
    demo.add_argument(
        "--down", action="append", choices=["sales", "service", "marketing"], help="leave out"
    )
    demo.add_argument("--sales-dsn", help="a PostgreSQL DSN for the sales database")
    demo.add_argument("--cache-url", help="redis://127.0.0.1:6379/0 to share the cache in Redis")
    demo.add_argument(
        "--tls", action="store_true", help="every hop over HTTPS, from a CA made in DATA_DIR/tls"
    )
    demo.set_defaults(handler=cmd_demo)

    serve = commands.add_parser("serve", help="run the gateway against configured systems")
    serve.add_argument("--config", default=str(DEFAULT_CONFIG))
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    serve.add_argument("--tls-key", help="the certificate's private key (PEM)")
    serve.set_defaults(handler=cmd_serve)

    schema = commands.add_parser("schema", help="export or check schema.graphql")
    schema_actions = schema.add_subparsers(dest="action", required=True)
    export = schema_actions.add_parser("export", help="write the SDL")
    export.add_argument("-o", "--output", default="schema.graphql", help="file, or - for stdout")
    check = schema_actions.add_parser("check", help="exit 1 when schema.graphql is out of date")
    check.add_argument("--file", default="schema.graphql")
    for action in (export, check):
        action.add_argument(
            "--config", default=str(DEFAULT_CONFIG), help="its graph (default: the demo's)"
        )
    schema.set_defaults(handler=cmd_schema)

    graph = commands.add_parser("graph", help="check a graph declaration")
    graph_actions = graph.add_subparsers(dest="action", required=True)
    graph_check = graph_actions.add_parser(
        "check", help="validate a declaration; exit 1 with FILE:LINE: message"
    )
    graph_check.add_argument(
        "file", nargs="*", help="declaration file(s); default: the config's, or the demo's"
    )
    graph_check.add_argument("--config", default=str(DEFAULT_CONFIG))
    graph.set_defaults(handler=cmd_graph)

    identity = commands.add_parser("identity", help="the identity crosswalk")
    identity_actions = identity.add_subparsers(dest="action", required=True)
    sync = identity_actions.add_parser("sync", help="link new records of every system")
    sync.add_argument("--config", default=str(DEFAULT_CONFIG))
    sync.add_argument("--full", action="store_true", help="rescan every system from the start")
    report = identity_actions.add_parser("report", help="unlinked, conflicting, duplicate records")
    report.add_argument("--config", default=str(DEFAULT_CONFIG))
    report.add_argument("--json", action="store_true")
    export_cmd = identity_actions.add_parser(
        "export", help="the crosswalk as JSON lines: keyed hashes, never an email or phone"
    )
    import_cmd = identity_actions.add_parser(
        "import", help="a crosswalk export into an empty store (or --replace)"
    )
    for sub in (export_cmd, import_cmd):
        sub.add_argument("file", help="the JSON-lines file; - for stdout / stdin")
        sub.add_argument("--config", default=str(DEFAULT_CONFIG))
    import_cmd.add_argument(
        "--replace", action="store_true", help="replace what a non-empty store holds"
    )
    identity.set_defaults(handler=cmd_identity)

    subject = commands.add_parser("subject", help="a person's rights: report, erase")
    subject_actions = subject.add_subparsers(dest="action", required=True)
    for name, text in (
        ("report", "everything held about one person, and who accessed it"),
        ("erase", "erase one person where the graph declares how; list the rest"),
    ):
        action = subject_actions.add_parser(name, help=text)
        action.add_argument("--config", default=str(DEFAULT_CONFIG))
        who = action.add_mutually_exclusive_group(required=True)
        who.add_argument("--email")
        who.add_argument("--phone")
        who.add_argument("--customer", help="a CUID (cus_…)")
        if name == "report":
            action.add_argument("--json", action="store_true", help="one JSON object")
            action.add_argument("--html", help="also write a printable page (zh-CN and en)")
        else:
            action.add_argument("--confirm", action="store_true", help="required: it deletes")
    subject.set_defaults(handler=cmd_subject)

    quality = commands.add_parser("quality", help="data quality per system and field")
    quality_actions = quality.add_subparsers(dest="action", required=True)
    quality_report = quality_actions.add_parser(
        "report", help="completeness, validity, duplicates, match rate, conflicts, trend"
    )
    quality_report.add_argument("--config", default=str(DEFAULT_CONFIG))
    quality_report.add_argument("--json", action="store_true", help="one JSON object")
    quality_report.add_argument(
        "--worst", type=int, default=20, help="records to fix first, listed by id (default 20)"
    )
    quality.set_defaults(handler=cmd_quality)

    token = commands.add_parser("token", help="mint a development token (HS256 dev key)")
    token.add_argument("--config", default=str(DEFAULT_CONFIG))
    token.add_argument("--sub", required=True, help="the subject (a person or service)")
    token.add_argument("--role", action="append", required=True, help="repeatable")
    token.add_argument("--purpose", action="append", help="allowed purpose; repeatable")
    token.add_argument("--department")
    token.add_argument(
        "--amr", action="append", help="a sign-in method for step-up rules (e.g. mfa); repeatable"
    )
    token.add_argument("--ttl", type=int, default=3600, help="seconds (default 3600)")
    token.set_defaults(handler=cmd_token)

    policy = commands.add_parser("policy", help="read and check the policy file")
    policy_actions = policy.add_subparsers(dest="action", required=True)
    explain_cmd = policy_actions.add_parser("explain", help="the field x role matrix")
    explain_cmd.add_argument("--config", default=str(DEFAULT_CONFIG))
    explain_cmd.add_argument("--role", action="append", help="only these roles")
    explain_cmd.add_argument("--json", action="store_true")
    explain_cmd.add_argument(
        "--verb", choices=("read", "edit"), default="read", help="read (default) or edit"
    )
    check_cmd = policy_actions.add_parser("check", help="validate a policy file")
    check_cmd.add_argument("file", nargs="?", help="default: the configured or shipped file")
    check_cmd.add_argument("--config", default=str(DEFAULT_CONFIG))
    policy.set_defaults(handler=cmd_policy, file=None)

    cache = commands.add_parser("cache", help="the record cache")
    cache_actions = cache.add_subparsers(dest="action", required=True)
    invalidate = cache_actions.add_parser(
        "invalidate", help="evict records, through the gateway's signed webhook"
    )
    invalidate.add_argument("--config", default=str(DEFAULT_CONFIG))
    invalidate.add_argument("--url", help="the gateway (default: server.host/port of the config)")
    invalidate.add_argument("--source", required=True)
    invalidate.add_argument("--entity", required=True)
    invalidate.add_argument("--key", action="append", required=True, help="repeatable")
    cache.set_defaults(handler=cmd_cache)

    audit = commands.add_parser("audit", help="the access log")
    audit_actions = audit.add_subparsers(dest="action", required=True)
    from demo.console_seed import add_seed_parser

    add_seed_parser(audit_actions, DEFAULT_CONFIG)  # c360 audit seed: test logs only
    search = audit_actions.add_parser("search", help="records, newest first")
    verify_cmd = audit_actions.add_parser(
        "verify", help="check every hash chain (and the log against a signed checkpoint)"
    )
    verify_cmd.add_argument(
        "--checkpoint", metavar="FILE", help="a checkpoint file, or `latest` of checkpoint_dir"
    )
    rebuild = audit_actions.add_parser(
        "rebuild", help="derive the console's read models again from the PostgreSQL log"
    )
    checkpoint_cmd = audit_actions.add_parser(
        "checkpoint", help="sign a checkpoint (Merkle roots) of the log into checkpoint_dir"
    )
    checkpoint_cmd.add_argument(
        "--chain", action="append", help="only this chain (repeatable; default: every chain)"
    )
    prove_cmd = audit_actions.add_parser(
        "prove", help="an inclusion proof of a request's records, or a consistency proof (JSON)"
    )
    prove_cmd.add_argument("--request-id", help="the request (its X-Request-Id)")
    prove_cmd.add_argument(
        "--checkpoint", metavar="FILE", help="as of this checkpoint (default: the newest covering)"
    )
    prove_cmd.add_argument("--from", dest="old", metavar="OLD", help="the older checkpoint")
    prove_cmd.add_argument("--to", dest="new", metavar="NEW", help="the newer checkpoint")
    prune_cmd = audit_actions.add_parser(
        "prune", help="drop records older than a date, leaving a signed cut that verifies"
    )
    prune_cmd.add_argument(
        "--before", metavar="DATE", help="e.g. 2026-11-01 (default: now - audit.retention_days)"
    )
    prune_cmd.add_argument("--chain", action="append", help="only this chain (repeatable)")
    public_key_cmd = audit_actions.add_parser(
        "public-key", help="the checkpoint key's public half (PEM), for tools/verify_proof.py"
    )
    public_key_cmd.add_argument("--id", help="a key id of audit.checkpoint_key (default: signer)")
    for sub in (search, verify_cmd, rebuild, checkpoint_cmd, prove_cmd, prune_cmd, public_key_cmd):
        sub.add_argument("--config", default=str(DEFAULT_CONFIG))
        sub.add_argument("--data-dir", help="the demo's data directory (instead of --config)")
    search.add_argument("--customer", help="a CUID")
    search.add_argument("--subject")
    search.add_argument("--field", help="a field name, e.g. nationalId")
    search.add_argument("--since", help="ISO 8601 time")
    search.add_argument("--until", help="ISO 8601 time")
    search.add_argument("--first", type=int, default=100)
    search.add_argument("--json", action="store_true", help="one JSON object per line")
    audit.set_defaults(handler=cmd_audit)

    keys = commands.add_parser("keys", help="the secrets in use")
    keys_actions = keys.add_subparsers(dest="action", required=True)
    status = keys_actions.add_parser("status", help="every key by id and age, never the key")
    status.add_argument("--config", default=str(DEFAULT_CONFIG))
    status.add_argument("--data-dir", help="the demo's data directory (instead of --config)")
    status.add_argument("--json", action="store_true")
    rotate_cmd = keys_actions.add_parser("rotate", help="a new key c360 manages itself")
    rotate_cmd.add_argument("which", choices=["audit.encryption_key"])
    rotate_cmd.add_argument("--config", default=str(DEFAULT_CONFIG))
    rotate_cmd.add_argument("--data-dir", help="the demo's data directory (instead of --config)")
    keys.set_defaults(handler=cmd_keys)

    documents = commands.add_parser("documents", help="trusted documents (persisted queries)")
    documents_actions = documents.add_subparsers(dest="action", required=True)
    add = documents_actions.add_parser(
        "add", help="validate documents against the schema and trust them"
    )
    add.add_argument("--config", default=str(DEFAULT_CONFIG))
    add.add_argument("files", nargs="+", help=".graphql files, or an Apollo manifest")
    documents.set_defaults(handler=cmd_documents)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(os.environ.get("C360_LOG_LEVEL", "WARNING"))
    try:
        code: int = args.handler(args)
    except (ConfigError, CliError) as error:
        print(f"c360: {error}", file=sys.stderr)
        return 1
    except SourceUnavailable as error:
        print(f"c360: {error.source} is unavailable: {error.reason}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"c360: {error}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
