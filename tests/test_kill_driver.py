"""Exactly-once under crashes: SIGKILL the driver's whole process group at random
moments, resume, and compare with a clean run (no duplicate, no missing id)."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.config import load_config
from pipeline.driver import execute, load_run_config
from storage.rundir import RunDir
from storage.verify import verify
from tests.conftest import committed_ids, pipeline_config, speechmed_process as _speechmed, write_dialogues

STAGES = ("ingest", "prefilter", "sim", "normalize")


def _config(tmp: Path) -> Path:
    source = write_dialogues(tmp / "in.json", 160, bad_every=9)
    stage = lambda name, kind, **params: {  # noqa: E731
        "name": name, "kind": kind, "params": params, "micro_batch_size": 8,
        "resources": {"actors": 2, "num_cpus": 0.25, "batch_timeout_s": 60}}
    cfg = pipeline_config(
        source, num_shards=4, part_size=32,
        stages=[stage("prefilter", "prefilter"), stage("sim", "simulate", latency_base_s=0.1),
                stage("normalize", "normalize")],
        exports=[{"name": "Out", "stage": "normalize"}],
    )
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def _exported(run: Path) -> list[str]:
    return sorted(pq.read_table(run / "datasets" / "Out" / "data").column("id").to_pylist())


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory, ray_address: str) -> tuple[Path, dict[str, list[str]], float]:
    tmp = tmp_path_factory.mktemp("kill")
    config = _config(tmp)
    run = tmp / "clean"
    started = time.monotonic()
    proc = _speechmed("run", str(config), "--run", str(run), address=ray_address)
    assert proc.wait(timeout=240) == 0, proc.stderr.read()
    duration = time.monotonic() - started
    expected = {stage: sorted(committed_ids(run, stage)) for stage in STAGES}
    expected["export"] = _exported(run)
    return config, expected, duration


def _trial(tmp: Path, config: Path, expected: dict[str, list[str]], duration: float, address: str, rng: random.Random,
           *, resume_in_process: bool = False) -> None:
    """Kill `speechmed run` (its process group) at a random moment, then finish the run:
    with `speechmed resume` as a user would, or, `resume_in_process`, with the driver's
    `execute` on the run's recorded config in this process (what the command calls,
    without a second interpreter's start-up: the slow trials' time)."""
    run = tmp / f"run-{rng.random():.8f}"
    kill_at = rng.uniform(0.2, duration)
    driver = _speechmed("run", str(config), "--run", str(run), address=address, start_new_session=True)
    time.sleep(kill_at)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    started = (run / "run.json").exists()
    if resume_in_process:
        cfg = load_run_config(RunDir(str(run))) if started else load_config(str(config))
        execute(cfg, str(run), command="pytest resume", ray_address=address)
    else:
        resume = _speechmed("resume", str(run), address=address) if started else \
            _speechmed("run", str(config), "--run", str(run), address=address)
        assert resume.wait(timeout=240) == 0, f"resume after a kill at {kill_at:.2f}s failed: {resume.stderr.read()}"
    for stage in STAGES:
        ids = committed_ids(run, stage)
        dupes = [i for i, n in Counter(ids).items() if n > 1]
        assert not dupes, f"kill at {kill_at:.2f}s: {stage} has duplicates {dupes[:3]}"
        assert sorted(ids) == expected[stage], f"kill at {kill_at:.2f}s: {stage} ids differ from the clean run"
    assert _exported(run) == expected["export"]
    assert verify(RunDir(str(run))) == []


def test_sigkill_driver_then_resume_is_exactly_once(clean_run, ray_address: str, tmp_path: Path) -> None:
    config, expected, duration = clean_run
    rng = random.Random(1)
    for _ in range(5):
        _trial(tmp_path, config, expected, duration, ray_address, rng)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_sigkill_driver_slow_trials(clean_run, ray_connected: str, tmp_path: Path) -> None:
    # With the 5 of the quick test, 25 driver kills; with tests/test_faults.py's slow trials
    # the fault matrix has more than 50 under the slow mark.
    config, expected, duration = clean_run
    rng = random.Random(2)
    for _ in range(20):
        _trial(tmp_path, config, expected, duration, ray_connected, rng, resume_in_process=True)
