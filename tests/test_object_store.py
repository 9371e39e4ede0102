"""The run directory on an object store (no atomic rename): an S3-compatible server (moto)
on 127.0.0.1, reached through pyarrow's S3FileSystem with the endpoint in the URI."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from pipeline.config import parse_config
from pipeline.driver import execute
from schemas import Rejection, SourceDialogue, Turn, to_table
from storage.lock import RunLocked
from storage.markers import ShardSeal
from storage.rundir import RunDir
from storage.verify import verify
from tests.conftest import committed_ids, pipeline_config, write_dialogues


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                raise
            time.sleep(0.1)
    endpoint = f"127.0.0.1:{port}"
    pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True).create_dir("runs")
    yield endpoint
    server.kill()
    server.wait()


def _uri(endpoint: str, name: str) -> str:
    return f"s3://runs/{name}?endpoint_override={endpoint}&scheme=http"


def _dialogue(i: int) -> SourceDialogue:
    return SourceDialogue(id=f"t-{i}", source="t", source_key=str(i),
                          turns=[Turn(role="patient", text="头疼"), Turn(role="doctor", text="多休息")])


def test_commit_protocol_without_rename(s3_endpoint: str) -> None:
    rundir = RunDir(_uri(s3_endpoint, "protocol"))
    assert not rundir.loc.atomic_rename
    rejected = Rejection(id="t-9", stage="s", reason="s.bad", record_json="{}")
    commit = rundir.commit_part("s", 0, 0, to_table([_dialogue(1), _dialogue(2)], SourceDialogue),
                                to_table([rejected], Rejection), fingerprint="f", rows_in=3,
                                rejected_by_reason={"s.bad": 1}, elapsed_s=0.1, session="x", fence=None)
    assert rundir.commits("s") == {(0, 0): commit}
    # A part whose marker was never written does not count, and resume removes it.
    rundir.write_bytes_rel(rundir.part_path("s", 0, 1), b"half a part")
    assert set(rundir.commits("s")) == {(0, 0)}
    assert rundir.clean_uncommitted("s") == [rundir.part_path("s", 0, 1)]
    rundir.seal(ShardSeal(stage="s", shard=0, fingerprint="f", parts=1, rows_in=3, rows_out=2,
                          rows_rejected=1, sealed_at=0.0))
    assert rundir.read_output("s", 0, 1).num_rows == 2


def test_lock_on_an_object_store(s3_endpoint: str) -> None:
    rundir = RunDir(_uri(s3_endpoint, "lock"))
    first = rundir.lock()
    first.acquire("first")
    with pytest.raises(RunLocked, match="in use by `first`"):
        rundir.lock().acquire("second")
    first.release()
    second = rundir.lock()
    second.acquire("second")
    second.release()


def test_pipeline_run_on_s3_is_verified_and_resumable(s3_endpoint: str, ray_connected: str, tmp_path: Path) -> None:
    source = write_dialogues(tmp_path / "in.json", 40, bad_every=6)
    stage = lambda name, kind: {"name": name, "kind": kind, "micro_batch_size": 8,  # noqa: E731
                                "resources": {"actors": 1, "num_cpus": 0.25}}
    cfg = parse_config(pipeline_config(source, stages=[stage("prefilter", "prefilter"), stage("normalize", "normalize")],
                                       exports=[{"name": "Out", "stage": "normalize"}], num_shards=2),
                       base_dir=None, origin="test")
    uri = _uri(s3_endpoint, "pipeline")
    first = execute(cfg, uri, command="pytest")
    rundir = RunDir(uri)
    assert verify(rundir) == []

    # Lose one committed part's marker (as if killed before it): resume redoes that part only.
    commit = rundir.commits("normalize")[(0, 0)]
    rundir.loc.fs.delete_file(rundir.abs(rundir.commit_path("normalize", 0, 0)))
    rundir.loc.fs.delete_file(rundir.abs(rundir.seal_path("normalize", 0)))
    again = execute(cfg, uri, command="pytest")
    assert again.rows_processed["normalize"] == commit.rows_in
    ids = committed_ids(uri, "normalize")
    assert len(ids) == len(set(ids)) == first.exports["Out"] == 40 - 7
    assert verify(rundir) == []


def test_sigkill_driver_on_s3_then_resume_is_exactly_once(s3_endpoint: str, ray_address: str, tmp_path: Path) -> None:
    """The driver's process group SIGKILLed mid-run with the run directory on the object
    store (no atomic rename: the commit marker is the commit point), then resumed: every
    stage's ids equal a clean run's, none twice, and verify is clean."""
    import os
    import random
    import signal
    from collections import Counter

    import yaml

    source = write_dialogues(tmp_path / "in.json", 96, bad_every=9)
    stage = lambda name, kind, **params: {  # noqa: E731
        "name": name, "kind": kind, "params": params, "micro_batch_size": 8,
        "resources": {"actors": 2, "num_cpus": 0.25, "batch_timeout_s": 60}}
    cfg = pipeline_config(source, num_shards=4, part_size=16, exports=[{"name": "Out", "stage": "normalize"}],
                          stages=[stage("prefilter", "prefilter"), stage("sim", "simulate", latency_base_s=0.1),
                                  stage("normalize", "normalize")])
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")

    from tests.conftest import speechmed_process

    def speechmed(*args: str, **kwargs: object) -> subprocess.Popen:
        return speechmed_process(*args, address=ray_address, **kwargs)

    stages = ("ingest", "prefilter", "sim", "normalize")
    clean = _uri(s3_endpoint, "kill-clean")
    proc = speechmed("run", str(config), "--run", clean)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    expected = {s: sorted(committed_ids(clean, s)) for s in stages}
    rng = random.Random(3)
    for trial in range(3):
        uri = _uri(s3_endpoint, f"kill-{trial}")
        driver = speechmed("run", str(config), "--run", uri, start_new_session=True)
        # Kill once the middle stage has committed a random number of parts.
        wanted, deadline = rng.randint(1, 8), time.monotonic() + 120
        while len(RunDir(uri).commits("sim")) < wanted and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        assert len(RunDir(uri).seals("normalize")) < 4, f"trial {trial}: the kill came after the run finished"
        resume = speechmed("resume", uri) if RunDir(uri).exists() else speechmed("run", str(config), "--run", uri)
        assert resume.wait(timeout=300) == 0, f"trial {trial}: {resume.stderr.read()}"
        for name in stages:
            ids = committed_ids(uri, name)
            assert not [i for i, n in Counter(ids).items() if n > 1], f"trial {trial}: {name} has duplicates"
            assert sorted(ids) == expected[name], f"trial {trial}: {name} differs from the clean run"
        assert verify(RunDir(uri)) == []
