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
    # customer -> when last read, oldest first: what the window needs is the distinct
    # customers, so it holds one entry per customer, not one per read (a page of 100 at
    # 200 requests/s made millions of entries in a 10-minute window).
    last_read: dict[str, float] = field(default_factory=dict)
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
        last_read = state.last_read
        for customer in read_customers:
            last_read.pop(customer, None)  # re-inserted: the newest read goes last
            last_read[customer] = now
        while last_read:
            oldest = next(iter(last_read))
            if last_read[oldest] >= now - window:
                break
            del last_read[oldest]
        if denied:
            state.denials.append((now, denied))
            state.denied_total += denied
        while state.denials and state.denials[0][0] < now - window:
            state.denied_total -= state.denials.popleft()[1]
        alerts: list[dict[str, object]] = []
        distinct = len(last_read)
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
