"""`speechmed plan`: the extrapolation arithmetic on hand-made calibration figures, how busy
time is read off commit markers, the calibration config and input counts, and the command
end to end on a real Ray cluster with the `simulate` stage, whose latency model gives a
known per-row cost, checked against a real full run of the same config."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.config import Resources, StageConfig, parse_config
from pipeline.costplan import (PlanError, StageSample, busy_seconds, calibration_config, count_inputs, extrapolate,
                               measure_stage)
from pipeline.plan import INGEST
from storage.markers import FileEntry, PartCommit
from storage.rundir import RunDir
from tests.conftest import pipeline_config, write_dialogues


def _stage(name: str, actors: int, gpus: float, batch: int, **params: object) -> StageConfig:
    return StageConfig(name=name, kind="simulate", params=params, micro_batch_size=batch,
                       resources=Resources(actors=actors, num_gpus=gpus))


def test_extrapolation_arithmetic() -> None:
    stages = [_stage("a", 2, 0, 10), _stage("b", 4, 1, 5), _stage("c", 3, 0.5, 10)]
    samples = {  # s/row of one actor: 0.5, 2 and 0.25; pass ratios 0.8, 3 (a fan-out) and 1
        "a": StageSample(rows_in=100, rows_out=80, parts=10, actors=1, busy_s=50),
        "b": StageSample(rows_in=80, rows_out=240, parts=16, actors=1, busy_s=160),
        "c": StageSample(rows_in=240, rows_out=240, parts=24, actors=1, busy_s=60),
    }
    plan = extrapolate(stages, samples, 1000, num_shards=10, plan_s=30)
    a, b, c = plan.stages
    assert [s.rows_in for s in plan.stages] == [1000, 800, 2400]
    assert [s.rows_out for s in plan.stages] == [800, 2400, 2400]
    assert [s.s_per_row for s in plan.stages] == [0.5, 2.0, 0.25]
    assert [s.actor_s for s in plan.stages] == [500, 1600, 600]
    assert [s.wall_s for s in plan.stages] == [250, 400, 200]  # actor-seconds / actors
    # One shard: rows per shard × s/row over the actors its micro-batches spread across.
    assert [s.shard_s for s in plan.stages] == [100 * 0.5 / 2, 80 * 2 / 4, 240 * 0.25 / 3]
    assert a.gpu_hours == 0 and b.gpu_hours == pytest.approx(400 * 4 * 1 / 3600) and c.gpu_hours == pytest.approx(200 * 3 * 0.5 / 3600)
    assert plan.bottleneck == "b"
    assert (plan.fill_s, plan.drain_s) == (25, 20)
    assert plan.wall_s == 30 + 25 + 400 + 20
    assert plan.gpu_hours == pytest.approx((1600 * 1 + 600 * 0.5) / 3600)
    # Every actor holds its GPUs from the start of the run to its end.
    assert plan.gpu_hours_held == pytest.approx((4 * 1 + 3 * 0.5) * 475 / 3600)
    assert plan.warnings == []
    assert json.loads(json.dumps(plan.to_dict()))["stages"][1]["calibration"]["s_per_row"] == 2.0


def test_unmeasured_and_underloaded_stages_are_flagged() -> None:
    stages = [_stage("a", 1, 0, 4), _stage("b", 1, 1, 4)]
    # Everything was rejected by `a` in the calibration: `b` never ran.
    plan = extrapolate(stages, {"a": StageSample(10, 0, 3, 1, 5.0), "b": StageSample(0, 0, 0, 0, 0.0)}, 100, num_shards=2)
    assert plan.stages[1].rows_in == 0 and not plan.stages[1].measured and plan.warnings == []
    plan = extrapolate(stages, {"a": StageSample(10, 0, 1, 1, 5.0)}, 100, num_shards=2)
    assert "a: the calibration gave it 1 micro-batch(es)" in plan.warnings[0]
    plan = extrapolate([_stage("a", 1, 0, 4), _stage("b", 1, 1, 4)], {"a": StageSample(8, 8, 2, 1, 1.0)}, 100, num_shards=2)
    assert plan.stages[1].rows_in == 100 and plan.stages[1].s_per_row is None
    assert plan.warnings == ["b: no row reached it in the calibration, so its cost (and the rows of the stages after "
                             "it) is unknown; calibrate with more records"]


def _commit(worker: str, start: float, end: float, rows: int) -> PartCommit:
    entry = FileEntry(path="x", rows=rows, bytes=1, sha256="0")
    return PartCommit(stage="s", shard=0, part=0, fingerprint="f", rows_in=rows, rows_out=rows, rows_rejected=0,
                      output=entry, committed_at=end, elapsed_s=end - start, worker=worker, session="x")


def test_busy_time_counts_concurrent_parts_once_and_sums_actors() -> None:
    commits = [
        _commit("h:1", 100, 110, 8), _commit("h:1", 101, 112, 8), _commit("h:1", 112.5, 120, 8),  # parts overlapping
        _commit("h:2", 200, 205, 4),
    ]
    assert busy_seconds(commits) == (120 - 100) + (205 - 200)
    sample = measure_stage(commits)
    assert (sample.rows_in, sample.parts, sample.actors, sample.s_per_row) == (28, 4, 2, 25 / 28)


def _two_sources(tmp: Path, stages: list[dict]) -> dict:
    cfg = pipeline_config(write_dialogues(tmp / "a.json", 30), stages=stages)
    big = write_dialogues(tmp / "b.json", 90)
    records = json.loads(big.read_text(encoding="utf-8"))
    for r in records:  # other ids and content than a.json's
        r["id"] = "b-" + r["id"]
        r["conversations"][0]["value"] += "我在外地。"
    big.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    cfg["sources"].append({"name": "big", "format": "sharegpt", "path": str(big)})
    return cfg


def test_calibration_draws_sources_by_share_one_shard_one_actor(tmp_path: Path) -> None:
    stages = [{"name": "sim", "kind": "simulate", "resources": {"actors": 5, "num_gpus": 1}}]
    raw = _two_sources(tmp_path, stages)
    raw["exports"] = [{"name": "Out", "stage": "sim"}]
    config = parse_config(raw, base_dir=None, origin="test")
    inputs = count_inputs(config, str(tmp_path / "inputs"))
    assert inputs.records == 120 and inputs.by_source["big"]["written"] == 90 and inputs.plan_s > 0
    small = calibration_config(config, inputs, 20)
    assert {s.name: s.limit for s in small.sources} == {"test": 5, "big": 15}  # 20 × 30/120 and 20 × 90/120
    assert small.num_shards == 1 and small.exports == []
    assert small.stages[0].resources == Resources(actors=1, num_gpus=1)
    # A source's own, smaller limit stays.
    raw["sources"][1]["limit"] = 4
    limited = parse_config(raw, base_dir=None, origin="test")
    assert {s.name: s.limit for s in calibration_config(limited, inputs, 20).sources} == {"test": 5, "big": 4}

    # A finished plan of the same config is reused, not redone; another config's is refused.
    again = count_inputs(config, str(tmp_path / "inputs"))
    assert again == inputs
    raw["seed"] = 99
    with pytest.raises(PlanError, match="holds an ingest plan of another config"):
        count_inputs(parse_config(raw, base_dir=None, origin="test"), str(tmp_path / "inputs"))


# -- end to end ------------------------------------------------------------------------
BASE_S, PER_ITEM_S, BATCH, ACTORS = 0.2, 0.1, 4, 3


def _config(tmp: Path, *, sim_gpus: float = 0) -> Path:
    source = write_dialogues(tmp / "in.json", 60, bad_every=5)
    cfg = pipeline_config(source, num_shards=4, stages=[
        {"name": "prefilter", "kind": "prefilter", "micro_batch_size": 5, "resources": {"actors": 2, "num_cpus": 0.25}},
        {"name": "sim", "kind": "simulate", "micro_batch_size": BATCH,
         "params": {"latency_base_s": BASE_S, "latency_per_item_s": PER_ITEM_S},
         "resources": {"actors": ACTORS, "num_cpus": 0.25, "num_gpus": sim_gpus}}])
    path = tmp / f"pipeline-{sim_gpus}.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def _speechmed(*args: str, address: str) -> subprocess.CompletedProcess:
    return subprocess.run(["speechmed", *args, "--address", address], capture_output=True, text=True, timeout=240)


def test_cli_plan_calibrates_and_extrapolates(tmp_path: Path, ray_address: str) -> None:
    config = _config(tmp_path)
    calibration, inputs = tmp_path / "calibration", tmp_path / "inputs"
    args = ["plan", str(config), "--calibrate", "24", "--calibration-run", str(calibration), "--inputs-run", str(inputs)]
    done = _speechmed(*args, "--json", address=ray_address)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    prefilter, sim = plan["stages"]
    assert plan["inputs"] == 60 and plan["calibration"]["limits"] == {"test": 24} and plan["calibration"]["records"] == 24

    # The calibration really ran the sample through every stage, with one actor each.
    rundir = RunDir(str(calibration))
    assert len(rundir.seals(INGEST)) == 1
    for stage in (prefilter, sim):
        commits = list(rundir.commits(stage["name"]).values())
        assert stage["calibration"]["rows_in"] == sum(c.rows_in for c in commits)
        assert stage["calibration"]["rows_out"] == sum(c.rows_out for c in commits)
        assert len({c.worker for c in commits}) == 1
    ratio = prefilter["calibration"]["rows_out"] / prefilter["calibration"]["rows_in"]
    assert 0 < ratio < 1  # the photo requests are rejected
    assert prefilter["pass_ratio"] == ratio and sim["rows_in"] == prefilter["rows_out"] == round(60 * ratio)

    # The simulated engine sleeps BASE_S per call plus PER_ITEM_S per row: a floor on the
    # measured cost; reads, commits and dispatch add a little on top (under 0.25 s a part
    # even on a loaded machine; a part sleeps 0.6 s).
    cal = sim["calibration"]
    slept = cal["parts"] * BASE_S + cal["rows_in"] * PER_ITEM_S
    assert slept / cal["rows_in"] <= sim["s_per_row"] <= (slept + 0.25 * cal["parts"]) / cal["rows_in"]
    assert sim["wall_s"] == pytest.approx(sim["rows_in"] * sim["s_per_row"] / ACTORS)
    assert sim["gpu_hours"] == 0 and plan["gpu_hours_held"] == 0
    assert plan["bottleneck"] == "sim"
    assert plan["wall_s"] == pytest.approx(plan["plan_s"] + plan["fill_s"] + sim["wall_s"] + plan["drain_s"])

    # Against a real full run of the same config (4 shards and 3 actors instead of 1 and 1):
    # the rows reaching the simulated engine are the sample's pass ratio away (24 of 60
    # records were sampled), and its actors spent about the calibration's seconds per row on
    # them (sequential actors: the sum of their parts' times). The full run pays a little
    # more: each actor reads each shard it works on, and each shard ends in a partial
    # micro-batch that still costs BASE_S.
    run = tmp_path / "full"
    assert _speechmed("run", str(config), "--run", str(run), "--json", address=ray_address).returncode == 0
    full = list(RunDir(str(run)).commits("sim").values())
    rows = sum(c.rows_in for c in full)
    assert abs(rows - sim["rows_in"]) <= 6
    assert 0.75 <= sum(c.elapsed_s for c in full) / (sim["s_per_row"] * rows) <= 1.5
    # A real run named as the calibration run by mistake is refused, not re-run.
    refused = _speechmed("plan", str(config), "--calibration-run", str(run), "--inputs-run", str(inputs),
                         address=ray_address)
    assert refused.returncode == 2 and "not a calibration run" in refused.stderr
    assert list(RunDir(str(run)).commits("sim").values()) == full

    # Planned again with the same folders: nothing is re-run, the same figures come back.
    table = _speechmed(*args, address=ray_address)
    assert table.returncode == 0, table.stderr
    assert f"{sim['s_per_row']:.4g}" in table.stdout and "the slowest stage" in table.stdout and "held" in table.stdout
    assert len(rundir.commits("sim")) == cal["parts"]
    again = json.loads(_speechmed(*args, "--json", address=ray_address).stdout)
    assert again["stages"] == plan["stages"]


def test_cli_plan_refuses_a_cluster_without_room(tmp_path: Path, ray_address: str) -> None:
    """The test cluster has no GPU: calibrating a stage that needs one would hang."""
    done = _speechmed("plan", str(_config(tmp_path, sim_gpus=1)), "--calibrate", "8", address=ray_address)
    assert done.returncode == 2
    assert "needs 1 GPUs (it has 0)" in done.stderr and "--address" in done.stderr
