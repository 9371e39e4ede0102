"""Per-stage metrics through Ray's metrics API, so the Ray dashboard and Prometheus see them.

The scheduler records them in the driver, the one process that sees every commit, so the
actors stay free of metrics code and a restarted actor cannot count a part twice. Every
series is tagged with `run` (the run directory) and `stage`:

    speechmed_rows_in / _rows_out / _rows_rejected   Counter  rows of the parts committed
    speechmed_parts_committed                         Counter  micro-batches committed
    speechmed_items_per_second                        Gauge    rows in per second, recent
    speechmed_shards_in_flight                        Gauge    active shards (at most max_shards_in_flight)
    speechmed_parts_in_flight                         Gauge    micro-batches dispatched, not yet back

Ray exports them from each node's metrics agent at `http://<node>:<metrics_export_port>/metrics`
(`ray start --metrics-export-port`; `ray.nodes()` lists the port as `MetricsExportPort`),
with its `ray_` prefix and, for counters, Prometheus' `_total` suffix:
`ray_speechmed_rows_out_total{run=...,stage=...}`. Counters count this driver's commits:
a resumed run starts them again from 0 (a counter reset to Prometheus, which `rate()`
handles); the run's own totals are what `speechmed status` reads from storage.
"""

from __future__ import annotations

import time
from collections import deque

from ray.util.metrics import Counter, Gauge

from storage.markers import PartCommit

TAGS = ("run", "stage")
RATE_WINDOW_S = 60.0


class RateWindow:
    """Rows per second over the parts committed in the last `window_s` seconds.

    A part counts as the interval it ran, [committed_at − elapsed_s, committed_at]; the rate
    is the rows of the parts that ended inside the window over the time from the start of
    the earliest of them (clamped to the window) to `now`. So a stage that just started is
    not diluted by time before its first part, and a stage that stalls decays to 0.
    """

    def __init__(self, window_s: float = RATE_WINDOW_S):
        self.window_s = window_s
        self._parts: deque[tuple[float, float, int]] = deque()  # (start, end, rows), by end

    def add(self, start: float, end: float, rows: int) -> None:
        self._parts.append((start, end, rows))

    def rate(self, now: float) -> float:
        horizon = now - self.window_s
        while self._parts and self._parts[0][1] < horizon:
            self._parts.popleft()
        if not self._parts:
            return 0.0
        start = max(horizon, min(p[0] for p in self._parts))
        span = now - start
        return sum(p[2] for p in self._parts) / span if span > 0 else 0.0


class PipelineMetrics:
    """The metrics of one run's stages, recorded by its scheduler."""

    def __init__(self, run: str, stages: list[str], *, window_s: float = RATE_WINDOW_S):
        self.run = run
        self.windows = {stage: RateWindow(window_s) for stage in stages}
        # Ray allows the same metric to be declared again (a second run in one process):
        # the new object adds to the same series.
        self.rows_in = Counter("speechmed_rows_in", "rows read by committed micro-batches", tag_keys=TAGS)
        self.rows_out = Counter("speechmed_rows_out", "rows accepted by committed micro-batches", tag_keys=TAGS)
        self.rows_rejected = Counter("speechmed_rows_rejected", "rows rejected (with a reason) by committed micro-batches",
                                     tag_keys=TAGS)
        self.parts = Counter("speechmed_parts_committed", "micro-batches committed", tag_keys=TAGS)
        self.items_per_s = Gauge("speechmed_items_per_second", f"rows in per second over the last {window_s:.0f}s",
                                 tag_keys=TAGS)
        self.shards_in_flight = Gauge("speechmed_shards_in_flight", "shards active in the stage", tag_keys=TAGS)
        self.parts_in_flight = Gauge("speechmed_parts_in_flight", "micro-batches dispatched and not yet back",
                                     tag_keys=TAGS)

    def _tags(self, stage: str) -> dict[str, str]:
        return {"run": self.run, "stage": stage}

    def committed(self, commit: PartCommit) -> None:
        tags = self._tags(commit.stage)
        self.parts.inc(1, tags=tags)
        # Counter.inc refuses 0: a part that rejected nothing adds nothing.
        for counter, rows in ((self.rows_in, commit.rows_in), (self.rows_out, commit.rows_out),
                              (self.rows_rejected, commit.rows_rejected)):
            if rows:
                counter.inc(rows, tags=tags)
        self.windows[commit.stage].add(commit.committed_at - commit.elapsed_s, commit.committed_at, commit.rows_in)

    def refresh(self, in_flight: dict[str, tuple[int, int]], now: float | None = None) -> None:
        """Set the gauges: `in_flight` maps each stage to (active shards, parts in flight)."""
        now = time.time() if now is None else now
        for stage, (shards, parts) in in_flight.items():
            tags = self._tags(stage)
            self.shards_in_flight.set(shards, tags=tags)
            self.parts_in_flight.set(parts, tags=tags)
            self.items_per_s.set(self.windows[stage].rate(now), tags=tags)

    def finish(self) -> None:
        """Nothing is in flight, and nothing flows, once the scheduler stops (done, failed
        or interrupted)."""
        for stage in self.windows:
            tags = self._tags(stage)
            for gauge in (self.shards_in_flight, self.parts_in_flight, self.items_per_s):
                gauge.set(0, tags=tags)
