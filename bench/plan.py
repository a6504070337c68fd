"""How long and how hard to drive each run: quick (`make bench`) and full (`make bench-full`)."""

from __future__ import annotations

from dataclasses import dataclass

# Fixed simulated latency per department system, in ms. Sales is a SQLite file, so the
# gateway's SQL connector sleeps this long (`simulated_latency_ms`); the HTTP systems sleep
# in the demo process. The lower bound and the peers' subgraphs add the same.
SYSTEM_LATENCY_MS = {"sales": 5, "service": 20, "marketing": 10}


@dataclass(frozen=True)
class Plan:
    mode: str
    concurrencies: tuple[int, ...]
    duration_s: float  # measured part of one run (wrk counts whole seconds)
    warmup_s: float  # same load just before each measured part (c > 1), not counted
    gateway_warmup_s: float  # per query, once per gateway process, at concurrency 16
    soak_s: float = 0.0  # 0: no soak
    soak_sample_s: float = 5.0
    soak_concurrency: int = 16
    profile_s: float = 0.0  # 0: no profile
    peer_fault_scenario: bool = False  # also run (e) on the peers
    # A run is lengthened to a few times the latency the previous concurrency predicts
    # (Little's law), up to this: a run shorter than its latency measures nothing.
    longest_run_s: float = 6.0
    # The overhead targets, measured in pairs: c360 and the lower bound take turns at
    # concurrency 1 (this many rounds of runs this long each), so that drift in the systems
    # or the machine between the two phases does not land in the difference. 0: the
    # overhead is read off the two phases' concurrency-1 runs.
    paired_rounds: int = 0
    paired_s: float = 5.0
    # Throughput against the peers, measured in turns: c360, Apollo and Hive all running,
    # one run each at a concurrency (the order rotated every round), these rounds. The
    # phases are tens of minutes apart, and this machine's speed drifts by a third in
    # that time. Empty: the peers' throughput is read off their own phase.
    turn_concurrencies: tuple[int, ...] = ()
    turn_rounds: int = 5
    turn_s: float = 5.0
    turn_pause_s: float = 1.0

    @classmethod
    def quick(cls) -> Plan:
        # Under three minutes for everything, peers included (once their npm install exists).
        return cls("quick", (1, 16, 64), duration_s=2.0, warmup_s=1.0, gateway_warmup_s=1.0)

    @classmethod
    def full(cls) -> Plan:
        return cls(
            "full",
            (1, 4, 16, 32, 64, 128),
            duration_s=15.0,
            warmup_s=3.0,
            gateway_warmup_s=5.0,
            soak_s=600.0,
            profile_s=15.0,
            peer_fault_scenario=True,
            longest_run_s=30.0,
            paired_rounds=9,
            turn_concurrencies=(4, 16, 64, 128),
        )

    @classmethod
    def turns_only(cls) -> Plan:
        """The full run's throughput in turns, with only short runs at c=1 besides."""
        full = cls.full()
        return cls(
            "turns",
            (1,),
            duration_s=2.0,
            warmup_s=1.0,
            gateway_warmup_s=1.0,
            turn_concurrencies=full.turn_concurrencies,
            turn_rounds=full.turn_rounds,
            turn_s=full.turn_s,
        )

    @classmethod
    def profile_only(cls) -> Plan:
        return cls(
            "profile", (16,), duration_s=0.0, warmup_s=0.0, gateway_warmup_s=3.0, profile_s=15.0
        )
