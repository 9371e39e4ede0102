"""The cost planner (`speechmed plan`): GPU-hours and wall time of a full run, extrapolated
from per-row costs measured by a short calibration run and the cluster size in the config.

1. **Inputs.** The config's full ingest plan (`pipeline.plan`, the code a run starts with)
   is committed into a scratch run directory. Its seals give the exact number of records
   the first stage reads (after sampling, limits and deduplication); its commit markers
   give the planning time. This reads every source once, on the driver, with no Ray and
   no GPU. `inputs_uri` keeps it (or names a finished plan, e.g. the real run's, to reuse).
2. **Calibration.** The config runs on about `records` records, each source `limit`ed to
   its share of the full input (so the mix of treatments, hence of per-row costs, is the
   full run's), with one shard and one actor per stage. With one shard every stage runs
   alone, on the whole sample at once, after the stage before it has sealed: its actor is
   never starved of work and never shares the machine with another stage's work. Kinds,
   parameters, micro-batch sizes, CPUs and GPUs per actor and parts in flight are the
   config's. Exports are left out.
3. **Measurement**, per stage, from the calibration's commit markers (`measure_stage`):
   an actor's busy time runs from the start of its first part to the commit of its last,
   so it includes reading inputs and committing, and parts that an actor runs at once
   (an LLM engine batching `parts_in_flight_per_actor` micro-batches) count once, not once
   per part. seconds per row of one actor = busy actor-seconds / rows in; the pass ratio
   is rows out / rows in (rejections lower it; the synthesize fan-out raises it above 1).
4. **Extrapolation** (`extrapolate`, pure arithmetic):

       rows_in(first stage) = the full plan's records; rows_in(next) = rows_in × pass ratio
       actor_s  = rows_in × s_per_row                 wall_s = actor_s / actors
       gpu_hours = wall_s × actors × num_gpus / 3600  (the GPU time the stage's work takes)
       shard_s  = (rows_in / num_shards) × s_per_row / min(actors, micro-batches per shard)

   Stages stream: a shard moves to the next stage as soon as it is sealed, so the slowest
   stage (the bottleneck) sets the pace, and the run takes
   `plan_s + fill_s + wall_s(bottleneck) + drain_s`, where fill_s is one shard's time
   through every stage before the bottleneck and drain_s through every stage after it.
   The scheduler starts every stage's actors with the run and keeps them to its end, so
   the GPUs held are `Σ actors × num_gpus × run wall time` (`gpu_hours_held`), more than
   the busy GPU-hours when stages wait on each other.

Not in the figures: engine load time (once per actor, at start, while the plan is read),
the exports, parts retried after failures or timeouts. A calibration that gives a stage
fewer micro-batches than its actor keeps in flight runs it below full load, so that
stage's figure is pessimistic; the plan says so (`warnings`).
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, field

import ray

from actors.registry import stage_class
from pipeline.config import PipelineConfig, StageConfig
from pipeline.driver import execute, stage_fingerprints
from pipeline.plan import INGEST, plan_ingest
from pipeline.raycluster import ray_session
from storage.markers import PartCommit
from storage.rundir import RunDir

PLAN_JSON = "plan/plan.json"
MODEL = ("per stage: wall = rows × s/row of one actor ÷ actors; GPU-hours = wall × actors × GPUs per actor; "
         "run wall = planning + one shard through the stages before the slowest + the slowest stage's wall "
         "+ one shard through the stages after it (streaming); GPU-hours held = every actor's GPUs for the "
         "whole run. Excludes engine load time, exports and retried parts.")


class PlanError(ValueError):
    """The plan cannot be made as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Inputs:
    """The full run's input: records the first stage reads, by source, and planning time."""

    records: int
    by_source: dict[str, dict[str, int]]
    plan_s: float


@dataclass(frozen=True)
class StageSample:
    """What the calibration measured of one stage."""

    rows_in: int
    rows_out: int
    parts: int
    actors: int
    busy_s: float  # actor-seconds, summed over the stage's actors

    @property
    def s_per_row(self) -> float | None:
        return self.busy_s / self.rows_in if self.rows_in else None

    @property
    def pass_ratio(self) -> float | None:
        return self.rows_out / self.rows_in if self.rows_in else None


@dataclass(frozen=True)
class StagePlan:
    name: str
    kind: str
    actors: int
    num_gpus: float
    rows_in: int
    rows_out: int
    pass_ratio: float | None
    s_per_row: float | None  # of one actor
    actor_s: float
    wall_s: float
    shard_s: float
    gpu_hours: float
    measured: bool
    calibration: StageSample | None


@dataclass
class CostPlan:
    inputs: int
    plan_s: float
    num_shards: int
    stages: list[StagePlan]
    bottleneck: str | None
    fill_s: float
    drain_s: float
    wall_s: float
    gpu_hours: float  # the GPU time the work takes
    gpu_hours_held: float  # GPUs reserved by the run's actors for its whole wall time
    warnings: list[str] = field(default_factory=list)
    model: str = MODEL
    calibration: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        for stage, plan in zip(out["stages"], self.stages):
            if plan.calibration is not None:
                stage["calibration"].update(s_per_row=plan.calibration.s_per_row, pass_ratio=plan.calibration.pass_ratio)
        return out


# -- measurement -----------------------------------------------------------------------
def busy_seconds(commits: list[PartCommit]) -> float:
    """Actor-seconds a stage's actors were busy: per actor (its `worker`), from the start of
    its first part to the commit of its last. Holds for a run that never starved its actors
    of work (the calibration's one shard): waits between parts are then dispatch and
    commit overheads that the full run pays too."""
    spans: dict[str, tuple[float, float]] = {}
    for c in commits:
        start, end = c.committed_at - c.elapsed_s, c.committed_at
        first, last = spans.get(c.worker, (start, end))
        spans[c.worker] = (min(first, start), max(last, end))
    return sum(end - start for start, end in spans.values())


def measure_stage(commits: list[PartCommit]) -> StageSample:
    return StageSample(
        rows_in=sum(c.rows_in for c in commits), rows_out=sum(c.rows_out for c in commits), parts=len(commits),
        actors=len({c.worker for c in commits}), busy_s=busy_seconds(commits),
    )


def measure(rundir: RunDir) -> dict[str, StageSample]:
    """Every stage of a finished run (ingest excluded), measured from its commit markers."""
    info = rundir.run_info()
    if info is None:
        raise PlanError(f"{rundir.uri} is not a speechmed run (no run.json)")
    return {name: measure_stage([c for c in rundir.commits(name).values() if c.fingerprint == fp])
            for name, fp in info.fingerprints.items() if name != INGEST}


# -- extrapolation ---------------------------------------------------------------------
def extrapolate(stages: list[StageConfig], samples: dict[str, StageSample], inputs: int, *,
                num_shards: int, plan_s: float = 0.0) -> CostPlan:
    """The full run's figures from per-stage calibration samples (see the module docstring)."""
    plans: list[StagePlan] = []
    warnings: list[str] = []
    rows = inputs
    for stage in stages:
        sample, res = samples.get(stage.name), stage.resources
        measured = sample is not None and sample.rows_in > 0
        s_per_row = sample.s_per_row if measured else None
        ratio = sample.pass_ratio if measured else None
        if not measured and rows:
            warnings.append(f"{stage.name}: no row reached it in the calibration, so its cost (and the rows of the "
                            "stages after it) is unknown; calibrate with more records")
        elif measured and sample.parts < _full_load_parts(stage):
            warnings.append(f"{stage.name}: the calibration gave it {sample.parts} micro-batch(es), fewer than its actor "
                            f"keeps in flight at full load ({_full_load_parts(stage)}), so its s/row is pessimistic; "
                            f"calibrate with more records")
        actor_s = rows * (s_per_row or 0.0)
        wall_s = actor_s / res.actors
        parts_per_shard = max(1, math.ceil(rows / num_shards / stage.micro_batch_size))
        shard_s = (rows / num_shards) * (s_per_row or 0.0) / min(res.actors, parts_per_shard)
        rows_out = round(rows * ratio) if ratio is not None else 0
        plans.append(StagePlan(
            name=stage.name, kind=stage.kind, actors=res.actors, num_gpus=res.num_gpus, rows_in=rows, rows_out=rows_out,
            pass_ratio=ratio, s_per_row=s_per_row, actor_s=actor_s, wall_s=wall_s, shard_s=shard_s,
            gpu_hours=wall_s * res.actors * res.num_gpus / 3600, measured=measured, calibration=sample,
        ))
        rows = rows_out
    slowest = max(range(len(plans)), key=lambda i: plans[i].wall_s, default=None)
    fill = sum(p.shard_s for p in plans[:slowest]) if slowest is not None else 0.0
    drain = sum(p.shard_s for p in plans[slowest + 1:]) if slowest is not None else 0.0
    wall = plan_s + fill + (plans[slowest].wall_s if slowest is not None else 0.0) + drain
    held = sum(s.resources.actors * s.resources.num_gpus for s in stages) * wall / 3600
    return CostPlan(
        inputs=inputs, plan_s=plan_s, num_shards=num_shards, stages=plans,
        bottleneck=plans[slowest].name if slowest is not None else None, fill_s=fill, drain_s=drain, wall_s=wall,
        gpu_hours=sum(p.gpu_hours for p in plans), gpu_hours_held=held, warnings=warnings,
    )


def _full_load_parts(stage: StageConfig) -> int:
    """Micro-batches a calibration must give a stage for its one actor to reach full load:
    two for a sequential one (so one queues behind the other), as many as it runs at once
    for a concurrent one (an LLM engine batching them)."""
    return max(2, stage.resources.parts_in_flight_per_actor if stage_class(stage.kind).concurrent else 2)


# -- inputs ----------------------------------------------------------------------------
def count_inputs(config: PipelineConfig, uri: str) -> Inputs:
    """Commit the config's full ingest plan into `uri` (or reuse a finished plan of the same
    fingerprint there) and read the record counts and planning time off it."""
    fingerprint = stage_fingerprints(config)[INGEST]
    rundir = RunDir(uri)
    sealed = rundir.seals(INGEST)
    other = sorted({s.fingerprint for s in sealed.values()} - {fingerprint})
    if other:
        raise PlanError(f"{uri} holds an ingest plan of another config (fingerprint {other[0]}, this config's is "
                        f"{fingerprint}); name an empty folder or a run of this config")
    if len(sealed) < config.num_shards:
        if rundir.exists():
            raise PlanError(f"{uri} is a run whose ingest is not finished; name an empty folder for the plan, or "
                            f"resume that run first")
        sealed = plan_ingest(uri, config, fingerprint, "costplan", None)
    counts = json.loads(rundir.read_bytes_rel(PLAN_JSON))
    # Each ingest commit records the time since planning started: the last one is the plan's time.
    plan_s = max((c.elapsed_s for c in rundir.commits(INGEST).values() if c.fingerprint == fingerprint), default=0.0)
    return Inputs(records=sum(s.rows_out for s in sealed.values()), by_source=counts["sources"], plan_s=plan_s)


# -- calibration -----------------------------------------------------------------------
def calibration_config(config: PipelineConfig, inputs: Inputs, records: int) -> PipelineConfig:
    """The config on about `records` records (each source limited to its share of the full
    input, at least one), one shard, one actor per stage, no exports."""
    raw = config.model_dump(mode="json")
    written = {name: counts.get("written", 0) for name, counts in inputs.by_source.items()}
    total = sum(written.values()) or 1
    for source in raw["sources"]:
        share = max(1, round(records * written.get(source["name"], 0) / total))
        source["limit"] = min(share, source["limit"]) if source["limit"] else share
    raw.update(num_shards=1, exports=[])
    for stage in raw["stages"]:
        stage["resources"]["actors"] = 1
    return PipelineConfig.model_validate(raw)


def _is_calibration(config: dict) -> bool:
    """Whether a run's recorded config has the shape `calibration_config` gives."""
    return (config.get("num_shards") == 1 and not config.get("exports")
            and all(s["resources"]["actors"] == 1 for s in config.get("stages", [])))


def _check_room(config: PipelineConfig) -> None:
    """Every calibration actor must fit at once (each stage's pool lives for the whole run):
    a cluster without room would leave an actor pending and the calibration hanging."""
    need = {"CPU": sum(s.resources.num_cpus for s in config.stages),
            "GPU": sum(s.resources.num_gpus for s in config.stages)}
    have = ray.cluster_resources()
    short = [f"{need[k]:g} {k}s (it has {have.get(k, 0):g})" for k in need if need[k] > have.get(k, 0) + 1e-9]
    if short:
        raise PlanError("the calibration runs one actor of every stage at once and needs "
                        + " and ".join(short) + " on the Ray cluster; run it where the config's resources exist "
                        "(--address of the GPU cluster, or `ray job submit ... -- speechmed plan ...`)")


def calibrate(config: PipelineConfig, uri: str, *, address: str | None = None) -> dict[str, StageSample]:
    """Run a calibration config into `uri` (what is committed there is kept) and measure it."""
    # Running into a directory re-runs every stage whose config differs: never let that be
    # a real run's directory named by mistake.
    existing = RunDir(uri).run_info()
    if existing is not None and not _is_calibration(existing.config):
        raise PlanError(f"{uri} holds a run that is not a calibration run (more than one shard or actor, or "
                        "exports); calibrating into it would replace its outputs: name another --calibration-run")
    with ray_session(address):
        _check_room(config)
        execute(config, uri, command=f"speechmed plan (calibration) --calibration-run {uri}", ray_address=address)
    return measure(RunDir(uri))


def plan_run(config: PipelineConfig, *, records: int, calibration_uri: str | None = None,
             inputs_uri: str | None = None, address: str | None = None) -> CostPlan:
    """Count the full input, calibrate on about `records` records, extrapolate. Scratch
    directories not named are temporary local folders, removed afterwards (on a cluster of
    several nodes name a `calibration_uri` every node can read, e.g. s3://...)."""
    with tempfile.TemporaryDirectory(prefix="speechmed-costplan-") as scratch:
        inputs = count_inputs(config, inputs_uri or f"{scratch}/inputs")
        small = calibration_config(config, inputs, records)
        run = calibration_uri or f"{scratch}/calibration"
        samples = calibrate(small, run, address=address)
        calibrated = sum(s.rows_out for s in RunDir(run).seals(INGEST).values())
    plan = extrapolate(config.stages, samples, inputs.records, num_shards=config.num_shards, plan_s=inputs.plan_s)
    plan.calibration = {
        "records": calibrated, "asked": records, "limits": {s.name: s.limit for s in small.sources},
        "inputs_by_source": inputs.by_source, "run": calibration_uri, "inputs_run": inputs_uri,
    }
    return plan
