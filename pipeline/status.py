"""Progress of a run, read from storage alone (works while a job runs elsewhere)."""

from __future__ import annotations

import time
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

    def to_dict(self) -> dict:
        return {**asdict(self), "eta_s": self.eta_s}


def _rate(commits: list[PartCommit]) -> float | None:
    """Rows per second over the latest session's commits."""
    if not commits:
        return None
    latest = max(commits, key=lambda c: c.committed_at).session
    mine = [c for c in commits if c.session == latest]
    start = min(c.committed_at - c.elapsed_s for c in mine)
    span = max(c.committed_at for c in mine) - start
    return sum(c.rows_in for c in mine) / span if span > 0 else None


def run_status(rundir: RunDir) -> RunStatus:
    info = rundir.run_info()
    if info is None:
        raise FileNotFoundError(f"{rundir.uri} is not a speechmed run (no run.json)")
    num_shards = info.config["num_shards"]
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
