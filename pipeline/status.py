"""Progress of a run, read from storage alone (works while a job runs elsewhere): per stage,
shards sealed, rows in / out / rejected, throughput, ETA and the GPU-hours spent so far."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from pipeline.plan import INGEST
from storage.markers import PartCommit
from storage.rundir import RunDir


@dataclass
class StageStatus:
    name: str
    shards: int
    shards_sealed: int
    rows_in: int
    rows_out: int
    rows_rejected: int
    rows_expected: int | None
    rows_per_s: float | None
    eta_s: float | None
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    num_gpus: float = 0.0
    gpu_hours: float = 0.0

    @property
    def done(self) -> bool:
        return self.shards_sealed == self.shards


@dataclass
class RunStatus:
    uri: str
    running: bool
    holder: str | None
    stages: list[StageStatus]

    @property
    def eta_s(self) -> float | None:
        etas = [s.eta_s for s in self.stages if not s.done]
        return None if not etas or None in etas else max(e for e in etas if e is not None)

    @property
    def gpu_hours(self) -> float:
        return sum(s.gpu_hours for s in self.stages)

    def to_dict(self) -> dict:
        return {**asdict(self), "eta_s": self.eta_s, "gpu_hours": self.gpu_hours}


def _rate(commits: list[PartCommit]) -> float | None:
    """Rows per second over the latest session's commits."""
    if not commits:
        return None
    latest = max(commits, key=lambda c: c.committed_at).session
    mine = [c for c in commits if c.session == latest]
    start = min(c.committed_at - c.elapsed_s for c in mine)
    span = max(c.committed_at for c in mine) - start
    return sum(c.rows_in for c in mine) / span if span > 0 else None


def busy_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals: overlapping time counted once."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def gpu_hours(commits: Iterable[PartCommit], num_gpus: float) -> float:
    """GPU-hours a stage's committed parts kept their actors' GPUs busy.

    A part ran over [committed_at − elapsed_s, committed_at] in the process that committed
    it (`worker`, host:pid, in driver `session`). One process is one actor holding
    `num_gpus` GPUs for its life, and micro-batches in flight at once in it
    (parts_in_flight_per_actor on a concurrent stage) share those GPUs. So per
    (session, worker) the busy time is the union of its parts' intervals, not their sum,
    and GPU-hours = Σ over workers of busy seconds × its GPUs / 3600, the GPUs its markers
    record (`num_gpus` here for markers that predate the field). A restarted actor is a
    new process, hence a new worker.

    What it leaves out, so it is a lower bound on the GPU-hours billed: engine load time,
    idle gaps between micro-batches, and work that was never committed (a part lost to a
    crash or a timeout, or overwritten when redone: only its last commit is on storage).
    Reserved GPU-hours (actors × num_gpus × wall time) is the upper bound. `elapsed_s`
    ends just before the part's files are written and `committed_at` just after, so each
    interval sits later than the work by the write time, which leaves its length right.
    """
    by_worker: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    held: dict[tuple[str, str], float] = {}
    for c in commits:
        by_worker[(c.session, c.worker)].append((c.committed_at - c.elapsed_s, c.committed_at))
        held[(c.session, c.worker)] = num_gpus if c.num_gpus is None else c.num_gpus
    return sum(busy_seconds(intervals) * held[w] for w, intervals in by_worker.items() if held[w]) / 3600


def stage_gpus(config: dict) -> dict[str, float]:
    """GPUs per actor of each stage, from a run's config snapshot (run.json): the latest
    value (resources never change a fingerprint, so a resumed run may hold others). Commit
    markers record what their actor held; this counts the markers that predate that."""
    return {s["name"]: float(s.get("resources", {}).get("num_gpus", 0)) for s in config.get("stages", [])}


def run_status(rundir: RunDir) -> RunStatus:
    info = rundir.run_info()
    if info is None:
        raise FileNotFoundError(f"{rundir.uri} is not a speechmed run (no run.json)")
    num_shards = info.config["num_shards"]
    gpus = stage_gpus(info.config)
    holder = rundir.lock().holder()
    stages: list[StageStatus] = []
    expected: int | None = None
    for name in info.fingerprints:
        commits = [c for c in rundir.commits(name).values() if c.fingerprint == info.fingerprints[name]]
        seals = rundir.seals(name)
        reasons: dict[str, int] = {}
        for c in commits:
            for reason, n in c.rejected_by_reason.items():
                reasons[reason] = reasons.get(reason, 0) + n
        status = StageStatus(
            name=name, shards=num_shards, shards_sealed=len(seals),
            rows_in=sum(c.rows_in for c in commits), rows_out=sum(c.rows_out for c in commits),
            rows_rejected=sum(c.rows_rejected for c in commits),
            rows_expected=None if name == INGEST and len(seals) < num_shards else (
                sum(s.rows_in for s in seals.values()) if name == INGEST else expected),
            rows_per_s=_rate(commits), eta_s=None, rejected_by_reason=reasons,
            num_gpus=gpus.get(name, 0.0), gpu_hours=gpu_hours(commits, gpus.get(name, 0.0)),
        )
        if status.done:
            status.rows_expected, status.eta_s = status.rows_in, 0.0
        elif status.rows_expected is not None and status.rows_per_s:
            status.eta_s = max(status.rows_expected - status.rows_in, 0) / status.rows_per_s
        # What the next stage should expect: this stage's expected input times its pass rate.
        if status.rows_expected is not None:
            ratio = status.rows_out / status.rows_in if status.rows_in else 1.0
            expected = round(status.rows_expected * ratio) if not status.done else status.rows_out
        else:
            expected = None
        stages.append(status)
    running = holder is not None
    who = f"{holder.command} (pid {holder.pid} on {holder.host}, heartbeat {time.time() - holder.heartbeat_at:.0f}s ago)" if holder else None
    return RunStatus(uri=rundir.uri, running=running, holder=who, stages=stages)
