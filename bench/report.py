"""From the runs to the report: the gateway's overhead over the lower bound, its ratios to the
Node peers, the issue's targets (met or not, with the numbers), and `latest.json`, `latest.md`
and `latest.png` in `bench/results/` (`full.*` for a full run)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

C360 = "c360"
BOUND = "lower bound"
PEERS = ("apollo", "hive")
TARGET_ORDER = (C360, BOUND, *PEERS)
SYSTEMS = ("sales", "service", "marketing")

Run = Mapping[str, Any]


def ok_runs(runs: Iterable[Run]) -> list[Run]:
    return [run for run in runs if run.get("status") == "ok"]


def find(runs: Iterable[Run], target: str, label: str, concurrency: int) -> Run | None:
    for run in ok_runs(runs):
        if (run["target"], run["label"], run["concurrency"]) == (target, label, concurrency):
            return run
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def overhead(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """c360 minus the lower bound, and c360 over it, for (a) and (b) at each concurrency."""
    rows = []
    for run in ok_runs(runs):
        if run["target"] != C360 or run["label"] not in ("a", "b"):
            continue
        bound = find(runs, BOUND, run["label"], run["concurrency"])
        if bound is None:
            continue
        rows.append(
            {
                "label": run["label"],
                "concurrency": run["concurrency"],
                "c360_p50_ms": run["p50_ms"],
                "bound_p50_ms": bound["p50_ms"],
                "overhead_p50_ms": round(run["p50_ms"] - bound["p50_ms"], 3),
                "ratio_p50": _ratio(run["p50_ms"], bound["p50_ms"]),
                "c360_p99_ms": run["p99_ms"],
                "bound_p99_ms": bound["p99_ms"],
                "overhead_p99_ms": round(run["p99_ms"] - bound["p99_ms"], 3),
                "ratio_p99": _ratio(run["p99_ms"], bound["p99_ms"]),
            }
        )
    return rows


def paired_overhead(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per query, the median of the differences of c360's and the lower bound's p50 at
    concurrency 1 over runs taken in turn (a full run's `paired` rounds)."""
    rows = []
    for entry in results.get("paired", []):
        pairs = entry["pairs"]
        if not pairs:
            continue
        differences = sorted(p["c360_p50_ms"] - p["bound_p50_ms"] for p in pairs)
        rows.append(
            {
                "label": entry["label"],
                "pairs": len(pairs),
                "duration_s": entry["duration_s"],
                "overhead_p50_ms": round(statistics.median(differences), 3),
                "lowest_ms": round(differences[0], 3),
                "highest_ms": round(differences[-1], 3),
                "c360_p50_ms": round(statistics.median(p["c360_p50_ms"] for p in pairs), 3),
                "bound_p50_ms": round(statistics.median(p["bound_p50_ms"] for p in pairs), 3),
            }
        )
    return rows


def turn_ratios(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per peer, query and concurrency: the median over the rounds of c360's throughput
    divided by the peer's, each round's runs taken in turn (a full run's `turns`)."""
    rows = []
    for entry in results.get("turns", []):
        for peer in PEERS:
            ratios = sorted(
                own / theirs
                for measured in entry["rounds"]
                if (own := measured.get(C360)) and (theirs := measured.get(peer))
            )
            if ratios:
                rows.append(
                    {
                        "peer": peer,
                        "label": entry["label"],
                        "concurrency": entry["concurrency"],
                        "rounds": len(ratios),
                        "throughput": round(statistics.median(ratios), 3),
                        "lowest": round(ratios[0], 3),
                        "highest": round(ratios[-1], 3),
                    }
                )
    return rows


COLD = {"a": "a", "b": "b", "e": "e"}  # c360's runs -> the peers' runs they compare with
WARM = {"c:a": "a", "c:b": "b"}  # c360 on a warm cache against the peers' same query


def peer_ratios(runs: Sequence[Run], labels: Mapping[str, str] = COLD) -> list[dict[str, Any]]:
    """c360 / peer for throughput (above 1 is better) and latency, CPU per request (below 1);
    `labels`: which of c360's runs, against which of the peer's at the same concurrency."""
    rows = []
    for peer in PEERS:
        for run in ok_runs(runs):
            if run["target"] != C360 or run["label"] not in labels:
                continue
            other = find(runs, peer, labels[run["label"]], run["concurrency"])
            if other is None:
                continue
            rows.append(
                {
                    "peer": peer,
                    "label": run["label"],
                    "concurrency": run["concurrency"],
                    "throughput": _ratio(run["rps"], other["rps"]),
                    "p50": _ratio(run["p50_ms"], other["p50_ms"]),
                    "p99": _ratio(run["p99_ms"], other["p99_ms"]),
                    "cpu_per_request": _ratio(
                        run.get("gateway_cpu_ms_per_request"),
                        other.get("gateway_cpu_ms_per_request"),
                    ),
                }
            )
    return rows


def _target(name: str, measured: str, met: bool | None, detail: str = "") -> dict[str, Any]:
    return {"target": name, "measured": measured, "met": met, "detail": detail}


def _check(results: Mapping[str, Any], target: str, label: str) -> Mapping[str, Any] | None:
    checks: list[Mapping[str, Any]] = results.get("checks", [])
    return next((c for c in checks if (c["target"], c["label"]) == (target, label)), None)


def _calls_text(calls: Mapping[str, Any] | None) -> str:
    if not calls:
        return "–"
    return "/".join("–" if calls.get(s) is None else f"{calls[s]:g}" for s in SYSTEMS)


def targets(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each met (True), not met (False) or not measured (None)."""
    runs = results.get("runs", [])
    rows = []
    over = {(r["label"], r["concurrency"]): r for r in overhead(runs)}
    paired = {r["label"]: r for r in paired_overhead(results)}
    for label, limit in (("a", 2.0), ("b", 10.0)):
        row = over.get((label, 1))
        name = f"({label}) p50 overhead over the lower bound ≤ {limit:g} ms (concurrency 1)"
        pair = paired.get(label)
        if pair is not None:
            rows.append(
                _target(
                    name,
                    f"{pair['overhead_p50_ms']:.2f} ms (median of {pair['pairs']} pairs of "
                    f"{pair['duration_s']:g} s runs in turn; {pair['lowest_ms']:.2f} to "
                    f"{pair['highest_ms']:.2f} ms)",
                    pair["overhead_p50_ms"] <= limit,
                )
            )
            continue
        if row is None:
            rows.append(_target(name, "not measured", None))
            continue
        rows.append(
            _target(
                name,
                f"{row['overhead_p50_ms']:.2f} ms ({row['c360_p50_ms']:.2f} − "
                f"{row['bound_p50_ms']:.2f}; ×{row['ratio_p50']})",
                row["overhead_p50_ms"] <= limit,
            )
        )
    for label in ("a", "b"):
        name = f"({label}) p99 ≤ 3 × p50, every concurrency"
        own = [r for r in ok_runs(runs) if r["target"] == C360 and r["label"] == label]
        if not own:
            rows.append(_target(name, "not measured", None))
            continue
        spread = {r["concurrency"]: r["p99_ms"] / r["p50_ms"] for r in own if r["p50_ms"]}
        worst = max(spread, key=lambda c: spread[c])
        listing = ", ".join(f"c={c}: {v:.2f}" for c, v in sorted(spread.items()))
        rows.append(
            _target(name, f"worst {spread[worst]:.2f} at c={worst} ({listing})", spread[worst] <= 3)
        )
    check = _check(results, C360, "b")
    name = "(b) exactly one call per source system (sales/service/marketing)"
    if check is None or not check.get("calls_per_query"):
        rows.append(_target(name, "not measured", None))
    else:
        calls = check["calls_per_query"]
        met = all(calls.get(s) == 1 for s in SYSTEMS)
        rows.append(_target(name, _calls_text(calls), met, "sequential probe, exact"))
    cache_checks = [_check(results, C360, label) for label in ("c:a", "c:b")]
    name = "(c) zero source calls on a warm cache"
    if any(c is None or c.get("problem") for c in cache_checks):
        reason = next((c["problem"] for c in cache_checks if c and c.get("problem")), "not run")
        rows.append(_target(name, f"not available: {reason}", None))
    else:
        cache_calls = [c["calls_per_query"] for c in cache_checks if c]
        met = all(all(v == 0 for v in cq.values()) for cq in cache_calls)
        rows.append(_target(name, "; ".join(_calls_text(cq) for cq in cache_calls), met))
    ratios = peer_ratios(runs)
    in_turns = turn_ratios(results)
    for peer in PEERS:
        name = f"throughput ≥ {peer}, (a) and (b), every concurrency"
        turns = [r for r in in_turns if r["peer"] == peer and r["label"] in ("a", "b")]
        own = turns or [r for r in ratios if r["peer"] == peer and r["label"] in ("a", "b")]
        status = results.get("peers", {}).get(peer, {}).get("status", "not run")
        if not own:
            rows.append(_target(name, f"not measured ({status})", None))
            continue
        worst = min(own, key=lambda r: r["throughput"] or 0)
        how = f"; median of {worst['rounds']} rounds in turns" if turns else ""
        rows.append(
            _target(
                name,
                f"worst ×{worst['throughput']} ({worst['label']}, c={worst['concurrency']}{how})",
                (worst["throughput"] or 0) >= 1,
            )
        )
    warm_ratios = peer_ratios(runs, WARM)
    for peer in PEERS:
        # The issue's own throughput target: (c), c360 on a warm cache against the peer
        # answering the same query (the peers cache nothing), at every concurrency.
        name = f"(c) throughput on a warm cache ≥ {peer}, (a) and (b), every concurrency"
        warm = [r for r in warm_ratios if r["peer"] == peer and r["throughput"] is not None]
        if not warm:
            rows.append(_target(name, "not measured", None))
            continue
        worst = min(warm, key=lambda r: r["throughput"])
        where = f"{WARM[worst['label']]}, c={worst['concurrency']}"
        rows.append(
            _target(name, f"worst ×{worst['throughput']} ({where})", worst["throughput"] >= 1)
        )
    soak = results.get("soak")
    name = "no RSS growth in the soak"
    if not soak:
        rows.append(_target(name, "not run (quick mode; `make bench-full`)", None))
    elif soak.get("status") != "ok":
        rows.append(_target(name, str(soak.get("status")), None))
    else:
        rows.append(
            _target(
                name,
                f"{soak['growth_mb']:+.1f} MB over {soak['window_s'] / 60:.0f} min "
                f"({soak['slope_mb_per_min']:+.2f} MB/min); threshold {soak['threshold_mb']} MB",
                soak["growth_mb"] <= soak["threshold_mb"],
            )
        )
    return rows


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _met(value: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "not measured"}[value]


def _sort_key(run: Run) -> tuple[str, int, int]:
    order = TARGET_ORDER.index(run["target"]) if run["target"] in TARGET_ORDER else 9
    return (run["label"], order, run["concurrency"])


def _section(
    title: str, head: str, align: str, lines: list[str], intro: str | None = None
) -> list[str]:
    """A Markdown section holding one table (its rows already formatted); nothing when
    there are no rows."""
    if not lines:
        return []
    return ["", f"## {title}", "", *([intro, ""] if intro else []), head, align, *lines]


def markdown(results: Mapping[str, Any]) -> str:
    meta = results["meta"]
    plan = results["plan"]
    runs = results.get("runs", [])
    out = [
        f"# c360 benchmark ({plan['mode']} mode, {meta['date']})",
        "",
        f"Machine: {meta['machine']}. c360 {meta.get('commit', '?')}.",
        f"Systems' simulated latency: {meta['latency']}. Load: {meta['load_generator']}; "
        f"each run {plan['duration_s']:g} s after {plan['warmup_s']:g} s of warm-up.",
        "",
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    for row in results.get("targets", []):
        out.append(f"| {row['target']} | {row['measured']} | {_met(row['met'])} |")
    out += [
        "",
        "## Runs",
        "",
        "Scenarios: " + "; ".join(f"({k}) {v}" for k, v in results.get("titles", {}).items()),
        "Calls per query are sales/service/marketing under load (for c360: the gateway's own",
        "sales count and request count, the HTTP systems' counts). CPU is per answered request.",
        "",
        "| scenario | target | c | req/s | p50 ms | p95 ms | p99 ms | calls/query "
        "| gw CPU ms/req | gw cores | systems CPU ms/req | peak RSS MB | client cores "
        "| other cores | errors |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in sorted(runs, key=_sort_key):
        if run.get("status") != "ok":
            out.append(
                f"| {run['label']} | {run['target']} | {run['concurrency']} "
                f"| {run['status']} |  |  |  |  |  |  |  |  |  |  |  |"
            )
            continue
        errors = run.get("non_2xx", 0) + run.get("socket_errors", 0)
        out.append(
            f"| {run['label']} | {run['target']} | {run['concurrency']} | {run['rps']:.1f} "
            f"| {run['p50_ms']:.1f} | {run['p95_ms']:.1f} | {run['p99_ms']:.1f} "
            f"| {_calls_text(run.get('calls_per_query'))} "
            f"| {_fmt(run.get('gateway_cpu_ms_per_request'), 2)} "
            f"| {_fmt(run.get('gateway_cores'), 2)} "
            f"| {_fmt(run.get('systems_cpu_ms_per_request'), 2)} "
            f"| {_fmt(run.get('peak_rss_mb'), 0)} | {_fmt(run.get('client_cores'), 3)} "
            f"| {_fmt(run.get('other_cores'), 2)} | {errors} |"
        )
    out += _section(
        "c360's overhead over the lower bound",
        "| query | c | c360 p50 | bound p50 | overhead p50 | ×p50 "
        "| c360 p99 | bound p99 | overhead p99 | ×p99 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        [
            f"| {r['label']} | {r['concurrency']} | {r['c360_p50_ms']:.2f} "
            f"| {r['bound_p50_ms']:.2f} | {r['overhead_p50_ms']:+.2f} | {r['ratio_p50']} "
            f"| {r['c360_p99_ms']:.2f} | {r['bound_p99_ms']:.2f} "
            f"| {r['overhead_p99_ms']:+.2f} | {r['ratio_p99']} |"
            for r in results.get("overhead", [])
        ],
    )
    out += _section(
        "The overhead at concurrency 1, c360 and the lower bound in turn",
        "| query | pairs | run s | c360 p50 (median) | bound p50 (median) "
        "| overhead p50 (median of the pairs) | lowest | highest |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        [
            f"| {r['label']} | {r['pairs']} | {r['duration_s']:g} | {r['c360_p50_ms']:.2f} "
            f"| {r['bound_p50_ms']:.2f} | {r['overhead_p50_ms']:+.2f} "
            f"| {r['lowest_ms']:+.2f} | {r['highest_ms']:+.2f} |"
            for r in results.get("paired_overhead", [])
        ],
    )
    out += _section(
        "c360 against the Node peers (c360 ÷ peer)",
        "| peer | query | c | throughput | p50 | p99 | gateway CPU per request |",
        "|---|---|---:|---:|---:|---:|---:|",
        [
            f"| {r['peer']} | {r['label']} | {r['concurrency']} | {_fmt(r['throughput'], 2)} "
            f"| {_fmt(r['p50'], 2)} | {_fmt(r['p99'], 2)} "
            f"| {_fmt(r['cpu_per_request'], 2)} |"
            for r in results.get("peer_ratios", [])
        ],
        intro="Throughput above 1 and latency or CPU below 1 favour c360.",
    )
    out += _section(
        "Throughput against the peers in turns (c360 ÷ peer)",
        "| peer | query | c | rounds | median | lowest | highest |",
        "|---|---|---:|---:|---:|---:|---:|",
        [
            f"| {r['peer']} | {r['label']} | {r['concurrency']} | {r['rounds']} "
            f"| {r['throughput']:.2f} | {r['lowest']:.2f} | {r['highest']:.2f} |"
            for r in results.get("turn_ratios", [])
        ],
        intro="c360 and both peers running at once, one run each per round (the order "
        "rotated): what the throughput targets read when present.",
    )
    out += ["", "## Checks before each scenario", ""]
    out += [
        "| target | scenario | answer | calls/query (5 sequential requests) |",
        "|---|---|---|---|",
    ]
    for check in results.get("checks", []):
        answer = check.get("problem") or "as expected"
        out.append(
            f"| {check['target']} | {check['label']} | {answer} "
            f"| {_calls_text(check.get('calls_per_query'))} |"
        )
    out += ["", "## Peers", ""]
    for peer, info in results.get("peers", {}).items():
        versions = ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items())
        out.append(f"- {peer}: {info.get('status')}" + (f" ({versions})" if versions else ""))
    profiles = results.get("profiles", {})
    if profiles:
        out += ["", "## Profiles", ""]
        for key, info in profiles.items():
            where = info.get("file", "")
            out.append(f"- ({key}): {info.get('status')}" + (f", `{where}`" if where else ""))
    soak = results.get("soak")
    if soak:
        out += ["", "## Soak", ""]
        if soak.get("status") == "ok":
            out.append(
                f"{soak['window_s'] / 60:.0f} min at c={soak['concurrency']} "
                f"({soak['requests']} requests, {soak['rps']:.0f} req/s): RSS "
                f"{soak['start_mb']:.1f} → {soak['end_mb']:.1f} MB "
                f"(growth {soak['growth_mb']:+.1f} MB, slope {soak['slope_mb_per_min']:+.2f} "
                f"MB/min, peak {soak['peak_mb']:.1f} MB)."
            )
        else:
            out.append(str(soak.get("status")))
    notes = results.get("notes", [])
    if notes:
        out += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    return "\n".join(out) + "\n"


def plot(results: Mapping[str, Any], path: Path) -> str | None:
    """Latency (p50 solid, p99 dashed) and throughput against concurrency, for (a) and (b).
    Returns why not, when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    runs = ok_runs(results.get("runs", []))
    colours = {C360: "tab:blue", BOUND: "tab:gray", "apollo": "tab:purple", "hive": "tab:orange"}
    figure, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    for column, label in enumerate(("a", "b")):
        latency, throughput = axes[0][column], axes[1][column]
        for target in TARGET_ORDER:
            mine = sorted(
                (r for r in runs if r["target"] == target and r["label"] == label),
                key=lambda r: r["concurrency"],
            )
            if not mine:
                continue
            xs = [r["concurrency"] for r in mine]
            colour = colours[target]
            latency.plot(xs, [r["p50_ms"] for r in mine], "o-", color=colour, label=f"{target} p50")
            latency.plot(xs, [r["p99_ms"] for r in mine], "s--", color=colour, alpha=0.7,
                         label=f"{target} p99")  # fmt: skip
            throughput.plot(xs, [r["rps"] for r in mine], "o-", color=colour, label=target)
        title = results.get("titles", {}).get(label, label)
        latency.set_title(f"({label}) {title}: latency", fontsize=10)
        latency.set_ylabel("ms")
        throughput.set_title(f"({label}) throughput", fontsize=10)
        throughput.set_ylabel("requests/s")
        for ax in (latency, throughput):
            ax.set_xscale("log", base=2)
            ticks = sorted({r["concurrency"] for r in runs})
            ax.set_xticks(ticks, [str(c) for c in ticks])
            ax.set_xlabel("concurrent connections")
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        latency.set_yscale("log")
    meta = results["meta"]
    figure.suptitle(f"c360 benchmark, {results['plan']['mode']} mode, {meta['date']}", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None


def finish(results: dict[str, Any]) -> dict[str, Any]:
    """Add the derived tables and the targets to the raw results."""
    busy = [r for r in ok_runs(results.get("runs", [])) if (r.get("other_cores") or 0) > 0.2]
    if busy:
        results.setdefault("notes", []).append(
            f"The machine was busy with other work during {len(busy)} run(s) (up to "
            f"{max(r['other_cores'] for r in busy):.2f} cores besides the benchmark's own "
            "processes, column 'other cores'): their numbers are not comparable."
        )
    results["overhead"] = overhead(results.get("runs", []))
    results["paired_overhead"] = paired_overhead(results)
    results["peer_ratios"] = peer_ratios(results.get("runs", []))
    results["turn_ratios"] = turn_ratios(results)
    results["targets"] = targets(results)
    return results


def write(results: dict[str, Any], out_dir: Path, stem: str = "latest") -> list[Path]:
    """`<stem>.json`, `<stem>.md` and `<stem>.png` in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    finish(results)
    png = out_dir / f"{stem}.png"
    reason = plot(results, png)
    if reason:
        results.setdefault("notes", []).append(reason)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    md_path.write_text(markdown(results), encoding="utf-8")
    return [json_path, md_path] + ([] if reason else [png])
