"""The benchmark harness's own logic, without starting anything: how targets are judged,
how wrk's and py-spy's output and the gateway's metrics are read, and what the report says."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import jwt
import pytest

from bench import report
from bench.counters import Counts, metric_sum
from bench.direct import percentile
from bench.load import LoadResult, lua_script, parse_result
from bench.plan import Plan
from bench.procs import cpu_seconds, machine_busy_seconds, peak_rss_bytes, rss_bytes
from bench.profiling import Profile
from bench.runner import Bench, Target, soak_summary
from bench.scenarios import ONE, PAGE, SCENARIOS, problem_with
from bench.tokens import mint
from bench.variants import Variant


def run(target: str, label: str, c: int, p50: float, p99: float, rps: float) -> dict[str, Any]:
    return {
        "target": target,
        "label": label,
        "concurrency": c,
        "status": "ok",
        "p50_ms": p50,
        "p95_ms": p99,
        "p99_ms": p99,
        "rps": rps,
        "gateway_cpu_ms_per_request": 2.0,
    }


def results(runs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "meta": {
            "date": "2026-01-01 00:00 UTC",
            "machine": "test",
            "latency": "x",
            "load_generator": "wrk",
        },
        "plan": {"mode": "quick", "duration_s": 2.0, "warmup_s": 1.0},
        "titles": {"a": "one", "b": "page"},
        "runs": runs,
        "checks": [],
        "peers": {},
        **extra,
    }


def verdicts(data: dict[str, Any]) -> dict[str, bool | None]:
    return {row["target"]: row["met"] for row in report.targets(data)}


def test_overhead_targets_are_judged_at_concurrency_one() -> None:
    data = results(
        [
            run("c360", "a", 1, 22.5, 30.0, 40.0),
            run("lower bound", "a", 1, 21.0, 25.0, 45.0),
            run("c360", "b", 1, 40.0, 50.0, 20.0),
            run("lower bound", "b", 1, 25.0, 30.0, 30.0),
        ]
    )
    met = verdicts(data)
    assert met["(a) p50 overhead over the lower bound ≤ 2 ms (concurrency 1)"] is True
    assert met["(b) p50 overhead over the lower bound ≤ 10 ms (concurrency 1)"] is False
    row = report.overhead(data["runs"])[0]
    assert row["overhead_p50_ms"] == pytest.approx(1.5)
    assert row["ratio_p50"] == pytest.approx(22.5 / 21.0, abs=1e-3)


def test_overhead_targets_read_the_median_of_pairs_taken_in_turn_when_there_are_any() -> None:
    # The phases alone say (a) is 3 ms over; the pairs, each taken within seconds, say the
    # median difference is 1.5 ms: the pairs decide. (b) has no pairs: the phases decide.
    pairs = [(22.2, 21.0), (24.5, 21.0), (22.6, 21.1), (22.4, 20.9), (30.0, 21.0)]
    paired = [
        {
            "label": "a",
            "duration_s": 5.0,
            "pairs": [{"c360_p50_ms": c, "bound_p50_ms": b} for c, b in pairs],
        }
    ]
    data = report.finish(
        results(
            [
                run("c360", "a", 1, 24.0, 30.0, 40.0),
                run("lower bound", "a", 1, 21.0, 25.0, 45.0),
                run("c360", "b", 1, 30.0, 40.0, 20.0),
                run("lower bound", "b", 1, 25.0, 30.0, 30.0),
            ],
            paired=paired,
        )
    )
    [row] = data["paired_overhead"]
    assert row["overhead_p50_ms"] == pytest.approx(1.5)  # of 1.2, 3.5, 1.5, 1.5, 9.0
    assert (row["lowest_ms"], row["highest_ms"]) == (pytest.approx(1.2), pytest.approx(9.0))
    met = verdicts(data)
    assert met["(a) p50 overhead over the lower bound ≤ 2 ms (concurrency 1)"] is True
    assert met["(b) p50 overhead over the lower bound ≤ 10 ms (concurrency 1)"] is True
    text = report.markdown(data)
    assert "c360 and the lower bound in turn" in text
    assert "median of 5 pairs of 5 s runs" in text


def test_tail_target_fails_when_any_concurrency_exceeds_three_times_p50() -> None:
    data = results([run("c360", "a", 1, 20.0, 30.0, 50.0), run("c360", "a", 16, 50.0, 160.0, 300)])
    row = next(r for r in report.targets(data) if r["target"].startswith("(a) p99"))
    assert row["met"] is False
    assert "worst 3.20 at c=16" in row["measured"]


def test_call_and_cache_targets_read_the_exact_probes() -> None:
    checks = [
        {"target": "c360", "label": "b", "problem": None, "calls_per_query": {
            "sales": 1.0, "service": 1.0, "marketing": 1.0}},
        {"target": "c360", "label": "c:a", "problem": None, "calls_per_query": {
            "sales": 0.0, "service": 0.0, "marketing": 0.0}},
        {"target": "c360", "label": "c:b", "problem": None, "calls_per_query": {
            "sales": 0.0, "service": 0.2, "marketing": 0.0}},
    ]  # fmt: skip
    met = verdicts(results([], checks=checks))
    assert met["(b) exactly one call per source system (sales/service/marketing)"] is True
    assert met["(c) zero source calls on a warm cache"] is False


def test_a_cache_that_did_not_start_is_not_available_rather_than_failed() -> None:
    checks = [
        {"target": "c360", "label": label, "problem": "not available: cache: unknown key",
         "calls_per_query": None}
        for label in ("c:a", "c:b")
    ]  # fmt: skip
    row = next(r for r in report.targets(results([], checks=checks)) if "(c)" in r["target"])
    assert row["met"] is None
    assert "cache: unknown key" in row["measured"]


def test_throughput_against_a_peer_takes_the_worst_ratio() -> None:
    runs = [
        run("c360", "a", 16, 50.0, 80.0, 300.0),
        run("apollo", "a", 16, 60.0, 90.0, 200.0),
        run("c360", "b", 16, 400.0, 500.0, 30.0),
        run("apollo", "b", 16, 200.0, 300.0, 60.0),
    ]
    data = results(runs, peers={"apollo": {"status": "ok"}})
    row = next(r for r in report.targets(data) if "apollo" in r["target"])
    assert row["met"] is False
    assert "×0.5 (b, c=16)" in row["measured"]
    assert verdicts(data)["throughput ≥ hive, (a) and (b), every concurrency"] is None


def test_the_warm_cache_throughput_target_compares_c_with_the_peers_cold_answers() -> None:
    runs = [
        run("c360", "c:a", 16, 5.0, 8.0, 1200.0),
        run("c360", "c:b", 16, 50.0, 80.0, 200.0),
        run("c360", "c:b", 64, 300.0, 400.0, 80.0),
        run("c360", "b", 64, 500.0, 600.0, 120.0),  # cold: not this target's
        run("apollo", "a", 16, 60.0, 90.0, 300.0),
        run("apollo", "b", 16, 200.0, 300.0, 90.0),
        run("apollo", "b", 64, 600.0, 900.0, 100.0),
    ]
    data = results(runs, peers={"apollo": {"status": "ok"}})
    judged = {row["target"]: row for row in report.targets(data)}
    apollo = judged["(c) throughput on a warm cache ≥ apollo, (a) and (b), every concurrency"]
    assert (apollo["met"], apollo["measured"]) == (False, "worst ×0.8 (b, c=64)")
    hive = judged["(c) throughput on a warm cache ≥ hive, (a) and (b), every concurrency"]
    assert hive["met"] is None
    runs[2] = run("c360", "c:b", 64, 300.0, 400.0, 150.0)
    apollo = next(r for r in report.targets(results(runs)) if r["target"].startswith("(c) thr"))
    assert (apollo["met"], apollo["measured"]) == (True, "worst ×1.5 (b, c=64)")


def test_throughput_in_turns_takes_the_median_round_and_overrides_the_phases() -> None:
    runs = [  # the phases, minutes apart: c360 behind at (a) 16
        run("c360", "a", 16, 50.0, 80.0, 200.0),
        run("apollo", "a", 16, 60.0, 90.0, 250.0),
    ]
    data = results(runs, peers={"apollo": {"status": "ok"}, "hive": {"status": "ok"}})
    data["turns"] = [
        {
            "label": "a",
            "concurrency": 16,
            "rounds": [
                {"c360": 300.0, "apollo": 250.0, "hive": 320.0},
                {"c360": 240.0, "apollo": 260.0, "hive": 250.0},  # one round behind
                {"c360": 330.0, "apollo": 300.0},  # hive's run failed
            ],
        },
        {"label": "b", "concurrency": 4, "rounds": [{"c360": 60.0, "apollo": 50.0}]},
    ]
    targets = {r["target"]: r for r in report.targets(data)}
    apollo = targets["throughput ≥ apollo, (a) and (b), every concurrency"]
    assert apollo["met"] is True
    assert apollo["measured"] == "worst ×1.1 (a, c=16; median of 3 rounds in turns)"
    hive = targets["throughput ≥ hive, (a) and (b), every concurrency"]
    assert hive["met"] is False  # the median of 0.9375 and 0.96: two rounds had hive
    assert hive["measured"] == "worst ×0.949 (a, c=16; median of 2 rounds in turns)"
    assert "Throughput against the peers in turns" in report.markdown(report.finish(data))


def test_markdown_lists_every_run_and_failed_runs_with_their_reason() -> None:
    runs = [
        run("c360", "a", 1, 22.0, 25.0, 40.0),
        {"target": "c360", "label": "d", "concurrency": 64, "status": "failed: no answer"},
    ]
    text = report.markdown(report.finish(results(runs)))
    assert "| a | c360 | 1 | 40.0 | 22.0 |" in text
    assert "| d | c360 | 64 | failed: no answer |" in text
    assert "## Targets" in text


def test_lua_script_quotes_bodies_that_contain_closing_brackets() -> None:
    body = b'{"query": "]]", "x": "]=]"}'
    script = lua_script([body], {"Authorization": "Bearer t"})
    assert "[==[" + body.decode() + "]==]" in script
    assert "wrk.headers[ [=[Authorization]=] ] = [=[Bearer t]=]" in script


def test_wrk_result_line_is_parsed_into_milliseconds() -> None:
    line = (
        'BENCH_RESULT {"requests": 200, "sent": 203, "duration_us": 2000000, "bytes": 1, '
        '"connect": 0, "read": 1, "write": 0, "status": 2, "timeout": 0, "mean_us": 9000.0, '
        '"max_us": 30000.0, "min_us": 1000.0, "percentiles_us": {"50": 8000, "90": 12000, '
        '"95": 15000, "99": 25000, "99.9": 29000}}'
    )
    result = parse_result("Running 2s test\n" + line + "\n", client_cpu_s=0.01)
    assert isinstance(result, LoadResult)
    assert (result.rps, result.p50_ms, result.p99_ms, result.p999_ms) == (100.0, 8.0, 25.0, 29.0)
    assert (result.non_2xx, result.socket_errors) == (2, 1)


def test_metric_sum_reads_one_label_or_all() -> None:
    text = "\n".join(
        [
            "# HELP c360_source_requests_total Calls",
            'c360_source_requests_total{source="sales"} 12.0',
            'c360_source_requests_total{source="service"} 3.0',
            'c360_source_requests_created{source="sales"} 1.7e9',
            'c360_requests_total{outcome="ok"} 10.0',
            'c360_requests_total{outcome="error"} 2.0',
        ]
    )
    assert metric_sum(text, "c360_source_requests_total", {"source": "sales"}) == 12.0
    assert metric_sum(text, "c360_requests_total") == 12.0


def test_calls_per_request_are_deltas_over_requests_served() -> None:
    before = Counts({"sales": 10.0, "service": 4.0, "marketing": 0.0}, requests=100.0)
    after = Counts({"sales": 20.0, "service": 9.0, "marketing": 0.0}, requests=110.0)
    assert after.per_request(before) == {"sales": 1.0, "service": 0.5, "marketing": 0.0}
    assert before.per_request(before) == {"sales": None, "service": None, "marketing": None}


def test_profile_counts_self_and_inclusive_time_once_per_stack() -> None:
    lines = [
        "main (gateway/cli.py);execute (graphql/execution/executor.py);"
        "resolve (resolvers/types.py) 3",
        "main (gateway/cli.py);execute (graphql/execution/executor.py) 1",
        "main (gateway/cli.py);loop (asyncio/base_events.py);loop (asyncio/base_events.py) 1",
    ]
    profile = Profile.parse(lines)
    assert profile.samples == 5
    assert profile.self_by_library == {"resolvers": 3, "graphql": 1, "asyncio": 1}
    assert profile.total_by_library["gateway"] == 5
    assert profile.total_by_library["asyncio"] == 1  # a recursive frame counts once


def test_soak_growth_ignores_the_warmup_minute() -> None:
    samples = [(float(t), 100.0 if t < 60 else 150.0 + 0.01 * t) for t in range(0, 600, 5)]
    result = LoadResult(1000, 1000, 600.0, 1.7, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1.0)
    summary = soak_summary(samples, result, 16, 160.0)
    assert summary["status"] == "ok"
    assert summary["slope_mb_per_min"] == pytest.approx(0.6, abs=0.01)
    assert 4.0 < summary["growth_mb"] < 5.5  # 0.6 MB/min over the ~9 min after warm-up


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (
        50.0,
        99.0,
        100.0,
    )
    assert percentile([], 50) == 0.0


def test_proc_readers_see_this_process() -> None:
    pid = os.getpid()
    assert cpu_seconds(pid) > 0
    assert peak_rss_bytes(pid) >= rss_bytes(pid) > 1_000_000
    assert machine_busy_seconds() >= cpu_seconds(pid)


def test_runs_disturbed_by_other_work_are_flagged() -> None:
    quiet = run("c360", "a", 1, 22.0, 25.0, 40.0) | {"other_cores": 0.05}
    busy = run("c360", "a", 16, 50.0, 90.0, 300.0) | {"other_cores": 0.9}
    notes = report.finish(results([quiet, busy]))["notes"]
    assert any("busy with other work during 1 run(s)" in note for note in notes)


def test_tokens_carry_role_purpose_and_the_configured_issuer() -> None:
    config = {
        "auth": {
            "issuer": "iss-x",
            "audience": "aud-y",
            "hs256": {"k1": "s" * 32, "dev": "d" * 32},
            "dev_key": "dev",
        }
    }
    token = mint(config, role="marketing", purpose="marketing")
    assert jwt.get_unverified_header(token)["kid"] == "dev"
    claims = jwt.decode(token, "d" * 32, algorithms=["HS256"], audience="aud-y", issuer="iss-x")
    assert (claims["roles"], claims["purpose"]) == (["marketing"], ["marketing"])


def test_answers_are_checked_against_the_scenario() -> None:
    ok = {"data": {"customer": {"id": "cus_x"}}}
    assert problem_with(200, ok, SCENARIOS["a"]) is None
    assert problem_with(401, {"errors": []}, SCENARIOS["a"]) == "HTTP 401: {'errors': []}"
    partial = {
        "data": {"customer": {"id": "cus_x"}},
        "errors": [{"extensions": {"code": "SOURCE_UNAVAILABLE", "source": "service"}}],
    }
    assert problem_with(200, partial, SCENARIOS["e"]) is None
    assert "unexpected error codes" in str(problem_with(200, partial, SCENARIOS["a"]))
    assert "missing error codes" in str(problem_with(200, ok, SCENARIOS["e"]))


def test_the_single_customer_query_varies_the_id_and_the_page_does_not() -> None:
    assert len(ONE.bodies(ONE.c360, ["cus_a", "cus_b"])) == 2
    assert len(PAGE.bodies(PAGE.c360, ["cus_a", "cus_b"])) == 1
    assert ONE.peer is not None and "requester" in ONE.peer and "contact" in ONE.peer


def test_variants_are_named_trees_with_their_environment() -> None:
    plain = Variant.parse("before=/tmp/before")
    assert (plain.name, plain.tree, plain.env) == ("before", Path("/tmp/before"), {})
    tuned = Variant.parse("tuned=.:C360_SERVER__MAX_IN_FLIGHT=0,PYTHONHASHSEED=1")
    assert tuned.tree == Path(".").resolve()
    assert tuned.env == {"C360_SERVER__MAX_IN_FLIGHT": "0", "PYTHONHASHSEED": "1"}
    with pytest.raises(argparse.ArgumentTypeError):
        Variant.parse("no-tree")


async def test_pairs_start_once_no_circuit_is_left_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after (e) the helpdesk's circuit may still be open, and c360 answers without
    it: the pairs wait out the breakers' cooldown first, then run."""
    plan = Plan("full", (1,), duration_s=1.0, warmup_s=0.0, gateway_warmup_s=0.0, paired_rounds=2)
    events: list[str] = []
    bench = Bench(
        plan, ["a"], with_peers=False, http=None, children=None, work_dir=tmp_path,  # type: ignore[arg-type]
        log=events.append,
    )  # fmt: skip
    bench.config = {"resilience": {"breaker_cooldown_s": 10}}
    answers = iter(["SOURCE_UNAVAILABLE: service", None])

    async def check(target: Any, scenario: Any, query: Any) -> str | None:
        problem = next(answers)
        bench.results["checks"].append({"problem": problem})
        events.append(f"check: {problem}")
        return problem

    async def measure(target: Any, key: str, concurrency: int, script: Any, seconds: float) -> Any:
        events.append("c360")
        return {"status": "ok", "p50_ms": 22.0}

    async def lower_bound(key: str, concurrencies: Any, seconds: float) -> Any:
        events.append("bound")
        return [{"status": "ok", "p50_ms": 21.0}]

    async def sleep(seconds: float) -> None:
        events.append(f"sleep {seconds:g}")

    monkeypatch.setattr(bench, "check", check)
    monkeypatch.setattr(bench, "measure", measure)
    monkeypatch.setattr(bench, "lower_bound", lower_bound)
    monkeypatch.setattr(bench, "bodies", lambda target, query: [b"{}"])
    monkeypatch.setattr(bench, "headers", lambda scenario: {})
    monkeypatch.setattr("bench.runner.asyncio.sleep", sleep)
    target = Target("c360", None, "http://127.0.0.1:1", None, [])  # type: ignore[arg-type]
    await bench.paired(target, "a")
    measured = [e for e in events if e in ("c360", "bound")]
    assert events.index("sleep 11") < events.index("check: None") < events.index("c360")
    assert measured == ["c360", "bound", "bound", "c360"]
    assert bench.results["checks"] == []  # the scenario's own check is the one reported
    assert any("SOURCE_UNAVAILABLE" in note for note in bench.results["notes"])
    assert [p["c360_p50_ms"] for p in bench.results["paired"][0]["pairs"]] == [22.0, 22.0]


def test_turns_mode_runs_the_full_runs_turns_and_little_else() -> None:
    turns, full = Plan.turns_only(), Plan.full()
    assert turns.mode == "turns" and turns.concurrencies == (1,)
    assert (turns.turn_concurrencies, turns.turn_rounds, turns.turn_s) == (
        full.turn_concurrencies,
        full.turn_rounds,
        full.turn_s,
    )
    assert not turns.soak_s and not turns.paired_rounds and not turns.profile_s
