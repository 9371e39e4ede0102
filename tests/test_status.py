"""GPU-hours in `speechmed status`: the union of each worker's part intervals × the GPUs its
actor held, from hand-made commit markers with exact figures (no Ray). A real run's
GPU-hours are checked in tests/test_job_submit.py, on a head with logical GPUs."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.status import busy_seconds, gpu_hours, run_status, stage_gpus
from storage.markers import PartCommit, RunInfo
from storage.rundir import RunDir

# (session, worker, start, end) of each committed part of the GPU stage. Worker h:1 of
# session s1 runs two micro-batches at once ([0, 10] and [5, 15]: one busy span of 15 s),
# then [20, 30]; h:2 runs [0, 10]; session s2 reuses pid 1 later: another actor.
PARTS = [("s1", "h:1", 0, 10), ("s1", "h:1", 5, 15), ("s1", "h:1", 20, 30), ("s1", "h:2", 0, 10),
         ("s2", "h:1", 100, 110)]
BUSY_S = 15 + 10 + 10 + 10  # a naive sum of part times would say 50
T0 = 1_700_000_000.0


@pytest.mark.parametrize(("intervals", "expected"), [
    ([], 0.0),
    ([(0, 10)], 10.0),
    ([(5, 15), (0, 10)], 15.0),  # overlapping, unsorted
    ([(0, 10), (2, 3)], 10.0),  # nested
    ([(0, 10), (10, 20)], 20.0),  # touching
    ([(0, 1), (5, 6), (0.5, 5.5)], 6.0),  # one interval bridges two
])
def test_busy_seconds_is_the_length_of_the_union(intervals, expected):
    assert busy_seconds(intervals) == pytest.approx(expected)


def _commit(part: int, session: str, worker: str, start: float, end: float, stage: str = "tts") -> PartCommit:
    return PartCommit.model_validate({
        "stage": stage, "shard": 0, "part": part, "fingerprint": f"fp-{stage}", "rows_in": 4, "rows_out": 4,
        "rows_rejected": 0, "output": {"path": f"{stage}/x.parquet", "rows": 4, "bytes": 1, "sha256": "0"},
        "committed_at": T0 + end, "elapsed_s": end - start, "worker": worker, "session": session})


def test_gpu_hours_counts_each_workers_busy_time_once():
    commits = [_commit(i, *p) for i, p in enumerate(PARTS)]
    assert gpu_hours(commits, 0.5) == pytest.approx(BUSY_S * 0.5 / 3600)
    assert gpu_hours(commits, 2) == pytest.approx(BUSY_S * 2 / 3600)
    assert gpu_hours(commits, 0) == 0.0


def test_gpu_hours_uses_what_each_marker_recorded():
    """Session s2 resumed the run with 1 GPU per actor instead of 0.5: its worker counts at 1,
    session s1's at the 0.5 its markers recorded, whatever the config says now; markers that
    record nothing (earlier versions) count at the config's value."""
    held = {"s1": 0.5, "s2": 1.0}
    commits = [_commit(i, *p).model_copy(update={"num_gpus": held[p[0]]}) for i, p in enumerate(PARTS)]
    s1_busy, s2_busy = BUSY_S - 10, 10
    expected = (s1_busy * 0.5 + s2_busy * 1.0) / 3600
    assert gpu_hours(commits, 2) == pytest.approx(expected) and gpu_hours(commits, 0) == pytest.approx(expected)
    unrecorded = [c.model_copy(update={"num_gpus": None}) if c.session == "s1" else c for c in commits]
    assert gpu_hours(unrecorded, 2) == pytest.approx((s1_busy * 2 + s2_busy * 1.0) / 3600)


def test_stage_gpus_reads_the_config_snapshot():
    config = {"stages": [{"name": "tts", "resources": {"num_gpus": 0.5}}, {"name": "clean", "resources": {}},
                         {"name": "asr"}]}
    assert stage_gpus(config) == {"tts": 0.5, "clean": 0.0, "asr": 0.0}


@pytest.fixture
def handmade_run(tmp_path: Path) -> Path:
    """A run directory with real committed parts whose markers carry the times of PARTS."""
    run = tmp_path / "run"
    rundir = RunDir(str(run))
    config = {"num_shards": 1, "stages": [{"name": "tts", "resources": {"num_gpus": 0.5}},
                                           {"name": "clean", "resources": {"num_gpus": 0}}]}
    rundir.write_model("run.json", RunInfo(config=config, seed=1, code_version="t", created_at=T0, updated_at=T0,
                                           fingerprints={"ingest": "fp-ingest", "tts": "fp-tts", "clean": "fp-clean"}))
    rows = pa.table({"id": ["a", "b", "c", "d"]})
    for stage, parts in (("tts", PARTS), ("clean", PARTS[:2])):
        for i, (session, worker, start, end) in enumerate(parts):
            real = rundir.commit_part(stage, 0, i, rows, None, fingerprint=f"fp-{stage}", rows_in=4,
                                      rejected_by_reason={}, elapsed_s=0.0, session=session, fence=None)
            timed = real.model_copy(update={"committed_at": T0 + end, "elapsed_s": end - start, "worker": worker})
            rundir.write_model(rundir.commit_path(stage, 0, i), timed)
    return run


def test_run_status_reports_gpu_hours_per_stage_and_in_total(handmade_run: Path):
    status = run_status(RunDir(str(handmade_run)))
    stages = {s.name: s for s in status.stages}
    assert stages["tts"].rows_in == 4 * len(PARTS)  # every hand-made marker is a valid commit
    assert (stages["tts"].num_gpus, stages["clean"].num_gpus, stages["ingest"].num_gpus) == (0.5, 0.0, 0.0)
    assert stages["tts"].gpu_hours == pytest.approx(BUSY_S * 0.5 / 3600)
    assert stages["clean"].gpu_hours == stages["ingest"].gpu_hours == 0.0
    assert status.gpu_hours == pytest.approx(BUSY_S * 0.5 / 3600)


def test_status_cli_shows_gpu_hours_in_json_and_table(handmade_run: Path):
    runner = CliRunner()
    result = runner.invoke(app, ["status", str(handmade_run), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["gpu_hours"] == pytest.approx(BUSY_S * 0.5 / 3600)
    tts = next(s for s in doc["stages"] if s["name"] == "tts")
    assert (tts["num_gpus"], tts["gpu_hours"]) == (0.5, pytest.approx(0.00625))
    table = runner.invoke(app, ["status", str(handmade_run)], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "GPU-h" in table.stdout and "0.00625" in table.stdout
    assert "GPU-hours so far 0.00625" in table.stdout
