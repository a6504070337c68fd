"""Alerts on access patterns: a subject reading personal fields of many distinct
customers (bulk access), or collecting many denied fields (probing), within a window.

Per instance, in memory: each instance watches the requests it serves. The alert is an
access-log record of its own (kind "alert") and a warning log line with the trace id."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class AlertSettings:
    bulk_customers: int = 200  # distinct customers with personal fields read ...
    denied_fields: int = 100  # ... or denied field decisions ...
    window_s: float = 600.0  # ... within this many seconds


@dataclass
class _Subject:
    reads: deque[tuple[float, str]] = field(default_factory=deque)  # (time, customer)
    read_counts: dict[str, int] = field(default_factory=dict)
    denials: deque[tuple[float, int]] = field(default_factory=deque)
    denied_total: int = 0
    last_bulk_alert: float = float("-inf")
    last_denied_alert: float = float("-inf")


class AccessPatterns:
    MAX_SUBJECTS = 100_000  # bound the memory a flood of distinct subjects can take

    def __init__(self, settings: AlertSettings) -> None:
        self.settings = settings
        self._subjects: dict[str, _Subject] = {}

    def observe(
        self, subject: str, read_customers: set[str], denied: int, now: float
    ) -> list[dict[str, object]]:
        """Add one request; return the alerts it raises (each at most once per window)."""
        if not read_customers and not denied:
            return []
        state = self._subjects.get(subject)
        if state is None:
            if len(self._subjects) >= self.MAX_SUBJECTS:
                self._subjects.pop(next(iter(self._subjects)))
            state = self._subjects[subject] = _Subject()
        window = self.settings.window_s
        for customer in read_customers:
            state.reads.append((now, customer))
            state.read_counts[customer] = state.read_counts.get(customer, 0) + 1
        while state.reads and state.reads[0][0] < now - window:
            _, customer = state.reads.popleft()
            state.read_counts[customer] -= 1
            if not state.read_counts[customer]:
                del state.read_counts[customer]
        if denied:
            state.denials.append((now, denied))
            state.denied_total += denied
        while state.denials and state.denials[0][0] < now - window:
            state.denied_total -= state.denials.popleft()[1]
        alerts: list[dict[str, object]] = []
        distinct = len(state.read_counts)
        if distinct > self.settings.bulk_customers and now - state.last_bulk_alert >= window:
            state.last_bulk_alert = now
            alerts.append(
                {
                    "alert": "bulk_access",
                    "distinct_customers": distinct,
                    "threshold": self.settings.bulk_customers,
                    "window_s": window,
                }
            )
        if (
            state.denied_total > self.settings.denied_fields
            and now - state.last_denied_alert >= window
        ):
            state.last_denied_alert = now
            alerts.append(
                {
                    "alert": "denied_burst",
                    "denied_fields": state.denied_total,
                    "threshold": self.settings.denied_fields,
                    "window_s": window,
                }
            )
        return alerts
