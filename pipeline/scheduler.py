"""Streams micro-batches of every stage through per-stage pools of Ray actors.

The driver holds only bookkeeping (which parts of which shards are committed or in
flight), never rows. A shard of a stage becomes active once the same shard of the stage
before it is sealed, so stages overlap; at most `max_shards_in_flight` shards per stage are
active (backpressure). Each actor has up to `parts_in_flight_per_actor` micro-batches
queued so it never idles between calls. A call past its deadline restarts its actor (the
other calls queued on that actor are redone without using an attempt); a dead actor's
calls are re-dispatched, and an actor killed while it starts is asked again; a part that
keeps failing stops the run, and so does full storage, at once: no retry can succeed before
space is freed. Per-stage metrics (`pipeline.metrics`) are recorded here, where every
commit is seen.

Actors are named `<session>/<stage>/<index>` (`actor_name`), so that `ray list actors` and
fault-injection tests can tell the stages' actors apart.
"""

from __future__ import annotations

import errno
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from actors.registry import stage_class
from actors.worker import PartRunner, StageSpec
from pipeline.config import Resources
from pipeline.metrics import PipelineMetrics
from storage.markers import PartCommit, ShardSeal
from storage.rundir import CommitRefused, RunDir

log = logging.getLogger(__name__)


CLOSE_TIMEOUT_S = 20  # for the engines of all actors to shut down at the end of a run


class PipelineError(RuntimeError):
    """The run cannot go on; the message says why and what to do."""


class EngineLoadError(PipelineError):
    """A stage's actors could not start (typically its engine failed to load)."""


class StorageFull(PipelineError):
    """The run directory's storage is full (or over quota); nothing more can be committed."""

    @classmethod
    def of(cls, run_uri: str, cause: OSError, writing: str = "") -> "StorageFull":
        """The error for `cause`; `writing`: what was being written, where it is known."""
        return cls(f"no space left on the storage of run {run_uri}{f' writing {writing}' if writing else ''} "
                   f"({cause}). Everything committed so far is kept; free space (or raise the quota), then "
                   f"`speechmed resume {run_uri}` finishes the run.")


def is_storage_full(exc: BaseException | None) -> bool:
    """Whether an error is a write refused for lack of space or quota (pyarrow keeps errno)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def actor_name(session: str, stage: str, index: int) -> str:
    return f"{session}/{stage}/{index}"


@dataclass
class _Shard:
    shard: int
    parts: int
    upstream_parts: int
    pending: deque[int]
    commits: dict[int, PartCommit]
    attempts: dict[int, int] = field(default_factory=dict)


@dataclass
class _Call:
    stage: "_StagePool"
    actor: int
    shard: int
    part: int
    deadline: float
    timed_out: bool = False
    collateral: bool = False  # its actor was restarted for another call's timeout


@dataclass
class _StagePool:
    spec: StageSpec
    resources: Resources
    actors: list[Any]
    sealed: dict[int, ShardSeal]
    concurrent: bool = False  # the actor runs its queued calls at once, not one by one
    queued: list[int] = field(default_factory=list)  # calls queued per actor
    actor_free_at: list[float] = field(default_factory=list)
    active: dict[int, _Shard] = field(default_factory=dict)
    start_failures: int = 0  # actors killed while starting (not an engine that cannot load)
    parts_run: int = 0
    rows_run: int = 0


ProgressCallback = Callable[[str, PartCommit | ShardSeal], None]


class Scheduler:
    def __init__(
        self,
        rundir: RunDir,
        specs: list[StageSpec],
        resources: dict[str, Resources],
        num_shards: int,
        *,
        fence: str | None,
        session: str,
        on_progress: ProgressCallback | None = None,
    ):
        self.rundir = rundir
        self.num_shards = num_shards
        self.fence = fence
        self.session = session
        self.on_progress = on_progress or (lambda stage, event: None)
        self.metrics = PipelineMetrics(rundir.uri, [spec.name for spec in specs])
        self.ingest_seals: dict[int, ShardSeal] = {}
        self.plan: ray.ObjectRef | None = None
        self.pools: list[_StagePool] = []
        self.calls: dict[ray.ObjectRef, _Call] = {}
        self.ready: dict[ray.ObjectRef, tuple[_StagePool, int]] = {}
        for spec in specs:
            res = resources[spec.name]
            concurrent = stage_class(spec.kind).concurrent
            actor_cls = ray.remote(PartRunner)
            options = dict(
                num_cpus=res.num_cpus,
                num_gpus=res.num_gpus,
                max_concurrency=res.parts_in_flight_per_actor if concurrent else 1,
                max_restarts=-1,
                max_task_retries=0,
            )
            sealed = rundir.seals(spec.name)
            # A stage already sealed whole (a resume after it finished) starts no actors:
            # its engine would load, and hold its GPUs, for nothing.
            count = 0 if len(sealed) == num_shards else res.actors
            actors = [actor_cls.options(name=actor_name(session, spec.name, i), **options)
                      .remote(rundir.uri, spec, fence, session) for i in range(count)]
            pool = _StagePool(spec, res, actors, sealed, concurrent)
            pool.queued = [0] * len(actors)
            pool.actor_free_at = [0.0] * len(actors)
            self.pools.append(pool)
            for index, actor in enumerate(actors):
                self.ready[actor.ready.remote()] = (pool, index)

    # -- bookkeeping -------------------------------------------------------------------
    def _upstream_sealed(self, index: int) -> dict[int, ShardSeal]:
        return self.ingest_seals if index == 0 else self.pools[index - 1].sealed

    def _activate(self, index: int) -> None:
        pool = self.pools[index]
        upstream = self._upstream_sealed(index)
        for shard in sorted(upstream):
            if len(pool.active) >= pool.resources.max_shards_in_flight:
                return
            if shard in pool.sealed or shard in pool.active:
                continue
            rows = upstream[shard].rows_out
            parts = -(-rows // pool.spec.micro_batch_size)
            commits = {p: c for (s, p), c in self.rundir.commits(pool.spec.name, shard).items() if c.fingerprint == pool.spec.fingerprint}
            pending = deque(p for p in range(parts) if p not in commits)
            pool.active[shard] = _Shard(shard, parts, upstream[shard].parts, pending, commits)
            self._seal_if_done(pool, pool.active[shard])

    def _seal_if_done(self, pool: _StagePool, work: _Shard) -> None:
        if len(work.commits) < work.parts:
            return
        commits = [work.commits[p] for p in range(work.parts)]
        seal = ShardSeal.from_commits(pool.spec.name, work.shard, pool.spec.fingerprint, commits)
        self.rundir.seal(seal)
        pool.sealed[work.shard] = seal
        del pool.active[work.shard]
        self.on_progress(pool.spec.name, seal)

    def _dispatch(self, pool: _StagePool) -> None:
        limit = pool.resources.parts_in_flight_per_actor
        for work in list(pool.active.values()):
            while work.pending:
                actor = min(range(len(pool.actors)), key=lambda a: pool.queued[a])
                if pool.queued[actor] >= limit:
                    return
                part = work.pending.popleft()
                ref = pool.actors[actor].run_part.remote(work.shard, part, work.upstream_parts)
                # A queued call's clock starts when the calls ahead of it are due
                # (at once when the actor runs its calls concurrently).
                start = time.monotonic() if pool.concurrent else max(time.monotonic(), pool.actor_free_at[actor])
                deadline = start + pool.resources.batch_timeout_s
                pool.actor_free_at[actor] = deadline
                pool.queued[actor] += 1
                self.calls[ref] = _Call(pool, actor, work.shard, part, deadline)

    def done(self) -> bool:
        return all(len(p.sealed) == self.num_shards for p in self.pools)

    # -- results -----------------------------------------------------------------------
    def _finish_call(self, ref: ray.ObjectRef) -> None:
        call = self.calls.pop(ref)
        pool, work = call.stage, call.stage.active[call.shard]
        pool.queued[call.actor] -= 1
        if pool.queued[call.actor] == 0:
            pool.actor_free_at[call.actor] = 0.0
        try:
            commit: PartCommit = ray.get(ref)
        except RayActorError as exc:
            if call.collateral:
                # Not this part's failure: it only shared the actor restarted for another
                # part's timeout, so it is redone without using one of its attempts.
                log.info("%s shard %d part %d: redone (its actor was restarted for another part)",
                         pool.spec.name, call.shard, call.part)
                work.pending.appendleft(call.part)
                return
            why = (f"timed out after {pool.resources.batch_timeout_s:.0f}s (batch_timeout_s)"
                   if call.timed_out else f"its actor died ({type(exc).__name__})")
            self._retry(pool, work, call.part, why)
            return
        except RayTaskError as exc:
            if isinstance(exc.cause, CommitRefused):
                raise PipelineError(str(exc.cause)) from None
            if is_storage_full(exc.cause):
                writing = f"stage {pool.spec.name} shard {call.shard} part {call.part}"
                raise StorageFull.of(self.rundir.uri, exc.cause, writing) from None
            self._retry(pool, work, call.part, f"{type(exc.cause).__name__}: {exc.cause}")
            return
        work.commits[call.part] = commit
        pool.parts_run += 1
        pool.rows_run += commit.rows_in
        self.metrics.committed(commit)
        self.on_progress(pool.spec.name, commit)
        self._seal_if_done(pool, work)

    def _retry(self, pool: _StagePool, work: _Shard, part: int, why: str) -> None:
        attempts = work.attempts[part] = work.attempts.get(part, 0) + 1
        log.warning("%s shard %d part %d failed (attempt %d): %s", pool.spec.name, work.shard, part, attempts, why)
        if attempts >= pool.resources.max_part_attempts:
            raise PipelineError(
                f"stage {pool.spec.name}: shard {work.shard} part {part} failed {attempts} times; "
                f"last error: {why}. Fix the cause, then `speechmed resume {self.rundir.uri}` "
                f"redoes only what is not committed."
            )
        work.pending.appendleft(part)

    def _check_ready(self, ref: ray.ObjectRef) -> None:
        pool, index = self.ready.pop(ref)
        try:
            ray.get(ref)
        except RayActorError as exc:
            # An actor killed while it starts (a signal, the OOM killer) is restarted by Ray:
            # ask it again, a bounded number of times. Its own constructor failing is final.
            if exc.actor_init_failed or pool.start_failures >= pool.resources.max_part_attempts * len(pool.actors):
                raise EngineLoadError(
                    f"stage {pool.spec.name} ({pool.spec.kind}): its actor could not start: "
                    f"{_root_cause(exc)}"
                ) from None
            pool.start_failures += 1
            log.warning("%s: actor %d died while starting (%s); asking its restart", pool.spec.name, index,
                        type(exc).__name__)
            self.ready[pool.actors[index].ready.remote()] = (pool, index)

    def _expire(self) -> None:
        now = time.monotonic()
        for ref, call in list(self.calls.items()):
            if call.deadline < now:
                call.timed_out = True
                log.warning("%s shard %d part %d passed its %.0fs timeout; restarting its actor",
                            call.stage.spec.name, call.shard, call.part, call.stage.resources.batch_timeout_s)
                ray.kill(call.stage.actors[call.actor], no_restart=False)
                # Its calls now fail with RayActorError and are re-dispatched; stop the
                # clock so the same actor is not killed twice for one hang.
                for other in self.calls.values():
                    if other.stage is call.stage and other.actor == call.actor:
                        other.deadline = float("inf")
                        other.collateral = other is not call

    def _check_plan(self, ref: ray.ObjectRef) -> None:
        self.plan = None
        try:
            self.ingest_seals = ray.get(ref)
        except RayTaskError as exc:
            if is_storage_full(exc.cause):
                raise StorageFull.of(self.rundir.uri, exc.cause, "the ingest stage") from None
            raise PipelineError(f"reading the sources failed: {type(exc.cause).__name__}: {exc.cause}") from None
        except RayError as exc:  # its process died more often than the task's retries
            raise PipelineError(
                f"planning the input stopped: {_root_cause(exc)}. `speechmed resume {self.rundir.uri}` "
                "plans again, keeping the ingest shards already sealed."
            ) from None

    # -- main loop ---------------------------------------------------------------------
    def run(self, plan: ray.ObjectRef) -> dict[int, ShardSeal]:
        """Run every stage to the end. `plan` is the planning task whose result (the ingest
        seals) feeds the first stage; actors start loading their engines meanwhile, so an
        engine that cannot load stops the run before planning ends. Returns the ingest seals."""
        self.plan = plan
        try:
            while self.plan is not None or not self.done():
                for index, pool in enumerate(self.pools):
                    self._activate(index)
                    self._dispatch(pool)
                waiting = list(self.ready) + list(self.calls) + ([self.plan] if self.plan is not None else [])
                if not waiting:
                    if self.done():
                        break
                    raise PipelineError("scheduler stalled: nothing in flight but stages unfinished (a bug)")
                next_deadline = min((c.deadline for c in self.calls.values()), default=float("inf"))
                timeout = max(0.0, min(next_deadline - time.monotonic(), 5.0))
                finished, _ = ray.wait(waiting, num_returns=1, timeout=timeout)
                if finished:
                    finished, _ = ray.wait(waiting, num_returns=len(waiting), timeout=0)
                for ref in finished:
                    if ref == self.plan:
                        self._check_plan(ref)
                    elif ref in self.ready:
                        self._check_ready(ref)
                    else:
                        self._finish_call(ref)
                self._expire()
                self.metrics.refresh({p.spec.name: (len(p.active), sum(p.queued)) for p in self.pools})
        finally:
            self.metrics.finish()
            # Let engines shut their own processes down first: killing the actor alone can
            # leave an engine's worker processes (and their GPU memory) behind.
            actors = [actor for pool in self.pools for actor in pool.actors]
            if actors:
                ray.wait([a.close.remote() for a in actors], num_returns=len(actors), timeout=CLOSE_TIMEOUT_S)
            for actor in actors:
                ray.kill(actor, no_restart=True)
        return self.ingest_seals


def _root_cause(exc: BaseException) -> str:
    """The original error without Ray's wrapping: its last `...Error: ...` line and the
    few lines after it (validation errors put their details there)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if "Error" in line and ":" in line]
    if not starts:
        return lines[-1] if lines else type(exc).__name__
    return " ".join(lines[starts[-1] : starts[-1] + 4])
