"""Running speechmed as a Ray job: `ray job submit --no-wait --working-dir . -- speechmed run`
against a real `ray start --head` on 127.0.0.1 (with its dashboard, which job submission
needs, and one logical GPU); `speechmed status --json` polled while the job runs shows the
rows growing and an ETA; `ray job stop`, then `speechmed resume` finishes the run with every
expected id exactly once, counts that reconcile and GPU-hours from the real markers.

The job's code is the uploaded working directory: the test checks where the job imported
`pipeline` from and that the upload leaves out run directories and .git.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pipeline.raycluster import LOOPBACK_ENV, local_head
from schemas import record_id
from storage.rundir import RunDir
from storage.verify import verify
from tests.conftest import REPO, committed_ids, pipeline_config, write_dialogues

ENV = {**os.environ, **LOOPBACK_ENV}
N, BAD_EVERY = 120, 6  # every 6th dialogue asks to upload a photo: the prefilter rejects it
SIM_LATENCY_S, SIM_GPUS = 2.5, 0.5
# Belt and braces: Ray already leaves out .git and what .gitignore names (runs/, caches).
EXCLUDES = {"excludes": [".git/", "runs/", ".pytest_cache/", "*.egg-info/", "__pycache__/"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def job_cluster() -> Iterator[tuple[str, str]]:
    """A head with the dashboard on a free loopback port and one logical GPU: (GCS address,
    job submission URL), once it runs jobs. The dashboard answers before the head's job
    agent has registered ("No available agent to submit job"), so wait for a trivial job."""
    port = _free_port()
    with local_head(num_cpus=2, num_gpus=1, dashboard=True, dashboard_port=port) as address:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while (ready := subprocess.run(["ray", "job", "submit", "--address", url, "--", "true"],
                                       env=ENV, capture_output=True, text=True)).returncode != 0:
            assert time.monotonic() < deadline, f"the head runs no jobs: {ready.stderr[-2000:]}"
            time.sleep(2)
        yield address, url


def _config(tmp: Path) -> Path:
    source = write_dialogues(tmp / "in.json", N, bad_every=BAD_EVERY)
    cfg = pipeline_config(source, num_shards=4, part_size=32, stages=[
        {"name": "prefilter", "kind": "prefilter", "micro_batch_size": 8,
         "resources": {"actors": 1, "num_cpus": 0.25}},
        # A stand-in for a GPU engine: each micro-batch holds half a (logical) GPU for 2.5 s.
        {"name": "sim", "kind": "simulate", "params": {"latency_base_s": SIM_LATENCY_S}, "micro_batch_size": 4,
         "resources": {"actors": 2, "num_cpus": 0.25, "num_gpus": SIM_GPUS, "batch_timeout_s": 60}},
    ])
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def _submit(url: str, job: str, *args: str) -> subprocess.CompletedProcess:
    """`ray job submit` of the repository as the working dir, from the repository root."""
    return subprocess.run(["ray", "job", "submit", "--address", url, "--submission-id", job, "--working-dir", ".",
                           "--runtime-env-json", json.dumps(EXCLUDES), *args],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)


def _status(run: Path) -> dict:
    proc = subprocess.run(["speechmed", "status", str(run), "--json"], env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _stage(doc: dict, name: str) -> dict:
    return next(s for s in doc["stages"] if s["name"] == name)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_job_imports_the_uploaded_working_dir(job_cluster: tuple[str, str]) -> None:
    """The job's code is the upload (first on its PYTHONPATH; `python -P` puts no script
    dir on sys.path, as for the `speechmed` script), and the upload is small."""
    from ray.job_submission import JobSubmissionClient

    _, url = job_cluster
    job = f"speechmed-where-{uuid.uuid4().hex[:8]}"
    where = "import os, pipeline; print('CODE', os.path.dirname(os.path.dirname(pipeline.__file__)))"
    probe = _submit(url, job, "--", sys.executable, "-P", "-c", where)
    assert probe.returncode == 0, probe.stderr
    logs = JobSubmissionClient(url).get_job_logs(job)
    code = Path(next(line.split(" ", 1)[1] for line in logs.splitlines() if line.startswith("CODE ")))
    assert code != REPO and "working_dir_files" in str(code), code
    assert (code / "pipeline" / "metrics.py").read_bytes() == (REPO / "pipeline" / "metrics.py").read_bytes()
    assert not (code / "runs").exists() and not (code / ".git").exists()
    uploaded = _dir_bytes(code)
    assert uploaded < 10 * 2**20, f"working dir upload is {uploaded / 2**20:.1f} MiB"


@pytest.mark.timeout(420)
def test_job_submit_status_stop_then_resume(job_cluster: tuple[str, str], tmp_path: Path) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    address, url = job_cluster
    client = JobSubmissionClient(url)
    config, run = _config(tmp_path), tmp_path / "run"
    job = f"speechmed-test-{uuid.uuid4().hex[:8]}"
    submit = _submit(url, job, "--no-wait", "--", "speechmed", "run", str(config), "--run", str(run), "--json")
    assert submit.returncode == 0, submit.stderr

    # Progress while the job runs, read by `speechmed status` from storage alone.
    seen: list[dict] = []
    deadline = time.monotonic() + 180
    while len(seen) < 2:
        assert time.monotonic() < deadline, f"no progress seen; job {client.get_job_status(job)}: {client.get_job_logs(job)[-2000:]}"
        assert client.get_job_status(job) in (JobStatus.PENDING, JobStatus.RUNNING), client.get_job_logs(job)[-3000:]
        if not (run / "run.json").exists():
            time.sleep(0.5)
            continue
        doc = _status(run)
        sim = _stage(doc, "sim")
        if doc["running"] and 0 < sim["rows_in"] and (not seen or sim["rows_in"] > _stage(seen[-1], "sim")["rows_in"]):
            seen.append(doc)
    expected_sim = N - N // BAD_EVERY
    for doc in seen:
        sim = _stage(doc, "sim")
        assert "speechmed run" in doc["holder"]
        assert sim["rows_in"] < expected_sim and sim["rows_expected"] == expected_sim
        assert sim["rows_per_s"] > 0 and sim["eta_s"] is not None and doc["eta_s"] is not None and doc["eta_s"] > 0
        assert sim["num_gpus"] == SIM_GPUS and sim["gpu_hours"] > 0

    stop = subprocess.run(["ray", "job", "stop", "--address", url, job], env=ENV, capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0, stop.stderr
    deadline = time.monotonic() + 60
    while client.get_job_status(job) != JobStatus.STOPPED:
        assert time.monotonic() < deadline, f"job not stopped: {client.get_job_status(job)}"
        time.sleep(0.5)
    stopped = _stage(_status(run), "sim")
    assert stopped["rows_in"] < expected_sim, "the job finished before it was stopped: slow the sim stage down"

    # The job reads STOPPED while its driver may still be exiting and holding the run's lock;
    # resume refuses a live holder ("in use"), so retry as a user would until it lets go.
    deadline = time.monotonic() + 120
    while True:
        resume = subprocess.run(["speechmed", "resume", str(run), "--address", address, "--json"],
                                env=ENV, capture_output=True, text=True, timeout=240)
        if resume.returncode == 0 or "is in use by" not in resume.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert resume.returncode == 0, resume.stderr
    redone = json.loads(resume.stdout)["rows_processed"]["sim"]
    assert 0 < redone <= expected_sim - stopped["rows_in"], f"resume redid committed work: {resume.stdout}"

    everyone = {record_id("test", f"dlg-{i:06d}") for i in range(N)}
    photo = {record_id("test", f"dlg-{i:06d}") for i in range(0, N, BAD_EVERY)}
    rundir = RunDir(str(run))
    for stage, expected in (("ingest", everyone), ("prefilter", everyone - photo), ("sim", everyone - photo)):
        ids = committed_ids(run, stage)
        assert not [i for i, n in Counter(ids).items() if n > 1], f"{stage}: duplicate ids"
        assert set(ids) == expected, f"{stage}: {len(expected - set(ids))} missing, {len(set(ids) - expected)} unexpected"
    assert set(rundir.read_rejected("prefilter").column("id").to_pylist()) == photo
    assert verify(rundir) == []

    final = _status(run)
    assert not final["running"]
    stages = {s["name"]: s for s in final["stages"]}
    for s in stages.values():
        assert s["shards_sealed"] == s["shards"] and s["rows_in"] == s["rows_out"] + s["rows_rejected"], s
    assert stages["ingest"]["rows_out"] == stages["prefilter"]["rows_in"] == N
    assert stages["prefilter"]["rows_out"] == stages["sim"]["rows_in"] == expected_sim
    # GPU-hours of the real run: the actors run one micro-batch at a time, so each worker's
    # busy time is the sum of its parts, at least the simulated latency each.
    commits = rundir.commits("sim").values()
    assert stages["sim"]["gpu_hours"] == pytest.approx(sum(c.elapsed_s for c in commits) * SIM_GPUS / 3600)
    assert stages["sim"]["gpu_hours"] >= len(commits) * SIM_LATENCY_S * SIM_GPUS / 3600
    assert len({c.session for c in commits}) == 2 and final["gpu_hours"] == stages["sim"]["gpu_hours"]
