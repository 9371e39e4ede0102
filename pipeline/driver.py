"""The driver: plan → schedule → commit accounting → export, under the run lock.

`execute` is what `speechmed run` and `speechmed resume` call; tests call it directly.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

import ray

from actors.base import fingerprint
from actors.registry import stage_class
from actors.worker import StageSpec
from pipeline.config import PipelineConfig
from pipeline.export import export_stage
from pipeline.plan import INGEST, plan_ingest
from pipeline.raycluster import ray_session
from pipeline.scheduler import ProgressCallback, Scheduler, StorageFull, is_storage_full
from pipeline.version import code_version
from schemas import SourceDialogue, arrow_schema
from storage.manifest import write_manifest
from storage.markers import RunInfo, StageStamp
from storage.rundir import MANIFEST, RUN_JSON, RunDir
from storage.verify import Problem

log = logging.getLogger(__name__)
# 2: the checks every source format shares (links out of a source folder, overlong turns,
# an empty source) quarantine records that version 1 ingested.
INGEST_VERSION = "2"
PLAN_RETRIES = 2


def stage_fingerprints(config: PipelineConfig) -> dict[str, str]:
    """Fingerprint of every stage, ingest first. Each includes the one before it, so a
    change invalidates that stage and every later one, never an earlier one."""
    previous = fingerprint({
        "stage": INGEST,
        "version": INGEST_VERSION,
        "seed": config.seed,
        "num_shards": config.num_shards,
        "part_size": config.ingest_part_size,
        "sources": [s.model_dump() for s in config.sources],
    })
    prints = {INGEST: previous}
    for stage in config.stages:
        cls = stage_class(stage.kind)
        instance = cls(stage.name, cls.Params.model_validate(stage.params), config.seed)
        previous = prints[stage.name] = fingerprint({
            "stage": stage.name,
            "kind": stage.kind,
            "version": cls.version,
            "params": instance.params.model_dump(mode="json"),
            "extra": instance.fingerprint_extra(),
            "micro_batch_size": stage.micro_batch_size,
            "upstream": previous,
        })
    return prints


def stage_specs(config: PipelineConfig, prints: dict[str, str]) -> list[StageSpec]:
    upstream = INGEST
    specs = []
    for stage in config.stages:
        specs.append(StageSpec(
            name=stage.name, kind=stage.kind, params=stage.params, run_seed=config.seed,
            upstream=upstream, fingerprint=prints[stage.name],
            micro_batch_size=stage.micro_batch_size, max_row_retries=stage.max_row_retries,
            num_gpus=stage.resources.num_gpus,
        ))
        upstream = stage.name
    return specs


@dataclass
class RunResult:
    session: str
    sealed: dict[str, int] = field(default_factory=dict)
    rows_processed: dict[str, int] = field(default_factory=dict)
    invalidated: list[str] = field(default_factory=list)
    cleaned: int = 0
    exports: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0


def prepare(rundir: RunDir, config: PipelineConfig, prints: dict[str, str]) -> tuple[list[str], int]:
    """Bring the directory in line with the config: write run.json, drop the manifest and
    the outputs of stages whose fingerprint changed, remove uncommitted leftovers. Under the
    lock only."""
    now = time.time()
    previous = rundir.run_info()
    info = RunInfo(
        config=config.model_dump(mode="json"),
        seed=config.seed,
        fingerprints=prints,
        code_version=code_version(),
        created_at=previous.created_at if previous else now,
        updated_at=now,
    )
    rundir.write_model(RUN_JSON, info)
    # The manifest describes a finished run (written at its end, or by `speechmed manifest`);
    # from here on stages may be dropped and parts added, so an old one would mislead.
    rundir.delete_rel(MANIFEST)
    invalidated, cleaned = [], len(rundir.clean_temp_files())
    stage_names = [INGEST, *(s.name for s in config.stages)]
    kinds = {INGEST: INGEST, **{s.name: s.kind for s in config.stages}}
    for name in stage_names:
        stamp = rundir.stamp(name)
        if stamp is not None and stamp.fingerprint != prints[name]:
            rundir.invalidate(name)
            invalidated.append(name)
            stamp = None
        if stamp is None:
            rundir.write_stamp(StageStamp(stage=name, kind=kinds[name], fingerprint=prints[name],
                                          shards=config.num_shards, created_at=now))
        cleaned += len(rundir.clean_uncommitted(name))
    # Stages no longer in the config keep their files but are no longer part of the run.
    return invalidated, cleaned


def execute(
    config: PipelineConfig,
    run_uri: str,
    *,
    command: str,
    ray_address: str | None = None,
    on_progress: ProgressCallback | None = None,
) -> RunResult:
    """Run (or resume) the pipeline of `config` in `run_uri` until every stage is sealed.

    Raises `StorageFull` (a `PipelineError`) when the run directory's storage refuses a
    write for lack of space, wherever the write was (lock, run.json, seals, exports)."""
    try:
        return _execute(config, run_uri, command=command, ray_address=ray_address, on_progress=on_progress)
    except OSError as exc:
        if is_storage_full(exc):
            raise StorageFull.of(run_uri, exc) from exc
        raise


def _execute(
    config: PipelineConfig,
    run_uri: str,
    *,
    command: str,
    ray_address: str | None,
    on_progress: ProgressCallback | None,
) -> RunResult:
    started = time.perf_counter()
    rundir = RunDir(run_uri)
    session = uuid.uuid4().hex[:12]
    result = RunResult(session=session)
    lock = rundir.lock()
    token = lock.acquire(command)
    try:
        prints = stage_fingerprints(config)
        result.invalidated, result.cleaned = prepare(rundir, config, prints)
        specs = stage_specs(config, prints)
        with ray_session(ray_address):
            resources = {s.name: s.resources for s in config.stages}
            # Actors start (and load their engines) while the plan is being built. Planning
            # takes no CPU slot, so actors holding every CPU cannot starve it.
            scheduler = Scheduler(rundir, specs, resources, config.num_shards,
                                  fence=token, session=session, on_progress=on_progress)
            # Planning is idempotent (sealed shards are kept): a planner whose process dies
            # (killed, out of memory) is run again rather than stopping the run.
            planner = ray.remote(num_cpus=0, max_retries=PLAN_RETRIES)(plan_ingest)
            ingest_seals = scheduler.run(planner.remote(rundir.uri, config, prints[INGEST], session, token))
        # Workers that died mid-write during the run (killed, timed out, a planner retried)
        # left temp files and parts no marker names; every worker has stopped by now.
        result.cleaned += sum(len(rundir.clean_uncommitted(name)) for name in prints) + len(rundir.clean_temp_files())
        all_seals = {INGEST: ingest_seals, **{p.spec.name: p.sealed for p in scheduler.pools}}
        result.sealed = {name: len(seals) for name, seals in all_seals.items()}
        result.rows_processed = {p.spec.name: p.rows_run for p in scheduler.pools}
        models = {INGEST: SourceDialogue, **{s.name: stage_class(s.kind).output_model for s in config.stages}}
        upstream = dict(zip([s.name for s in config.stages], [INGEST, *(s.name for s in config.stages)]))
        for export in config.exports:
            marker = export_stage(rundir, export.name, export.stage, arrow_schema(models[export.stage]),
                                  prints[export.stage], config.num_shards, all_seals,
                                  sharegpt_from=upstream[export.stage] if export.sharegpt else None)
            result.exports[export.name] = marker.rows
        write_manifest(rundir, [INGEST, *(s.name for s in config.stages)])
    finally:
        lock.release()
    result.elapsed_s = time.perf_counter() - started
    return result


def config_problems(rundir: RunDir) -> list[Problem]:
    """run.json's config against the fingerprints the run recorded (`verify` checks files
    against markers; this checks the config a resume would use). The first stage whose
    fingerprint differs is named: `speechmed resume` would drop and redo it and every later
    stage. Nothing when run.json is missing or unreadable (`verify` reports that)."""
    try:
        info = rundir.run_info()
    except (OSError, ValueError):
        return []
    if info is None:
        return []
    try:
        prints = stage_fingerprints(PipelineConfig.model_validate(info.config, context={"check_paths": False}))
    except (ValueError, KeyError) as exc:
        return [Problem(RUN_JSON, f"its config is not a valid pipeline config ({exc}); restore run.json")]
    names = list(dict.fromkeys([*info.fingerprints, *prints]))
    changed = [name for name in names if info.fingerprints.get(name) != prints.get(name)]
    if not changed:
        return []
    redo = names[names.index(changed[0]):]
    return [Problem(RUN_JSON, f"its config gives stage {changed[0]} another fingerprint than the run recorded: run.json "
                    "was edited, or the stage's code or prompts changed since the run. `speechmed resume` would redo "
                    f"{', '.join(redo)}; restore run.json, or change a run deliberately with `speechmed run CONFIG "
                    "--run RUN`")]


def load_run_config(rundir: RunDir) -> PipelineConfig:
    """The config a run was started with (for `resume`)."""
    info = rundir.run_info()
    if info is None:
        raise FileNotFoundError(f"{rundir.uri} is not a speechmed run (no run.json); start it with `speechmed run`")
    return PipelineConfig.model_validate(info.config)
