"""The fault-injection matrix: each fault at a random moment of a real run on a real Ray
cluster; every trial must end with each stage's ids equal to a clean run's (no duplicate,
none missing), in = out + rejected for every stage, and `verify` clean.

    fault                    where / how                                quick  slow  outcome
    SIGKILL of the driver    its whole process group                      5     20   resume finishes
                             (tests/test_kill_driver.py)
    SIGKILL of processes     the ingest planner; one or all actors of     4+1   16   the run absorbs it
                             prefilter, sim, normalize; sim actors
                             while their engine loads
    full disk                a tmpfs sized to fill at a random point,     1      6   clear error, resume
                             the CLI run as a user would                              after space is freed
    engine hangs             sim: on its first calls (timeout, actor      2      6   retried in the run /
                             restarted, retried) or on every call                     stops, runs without
    engine returns garbage   an LLM judge on an endpoint answering        1      4   rejected with reason
                             garbage (+ its actors SIGKILLed)                         codes, never lost

Test doubles, at true external boundaries: the `simulate` stage stands in for a GPU
engine (with injected hangs); `GarbageServer` (tests/llm_servers.py) stands in for a broken
model server, with the real OpenAI engine, LLM stage loop and scheduler running against
it; `_FullDisk` stands in for a full disk where a tmpfs cannot be mounted (not root).
"""

from __future__ import annotations

import errno
import io
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.config import parse_config
from pipeline.driver import execute
from pipeline.plan import INGEST
from pipeline.scheduler import PipelineError, StorageFull, is_storage_full
from pipeline.status import run_status
from storage.fs import Location
from storage.rundir import RunDir
from storage.verify import verify
from tests.conftest import committed_ids, pipeline_config, write_dialogues

pytestmark = pytest.mark.usefixtures("ray_connected")

STAGES = (INGEST, "prefilter", "sim", "normalize")
DIALOGUES = 96


def _stage(name: str, kind: str, *, timeout_s: float = 60, attempts: int = 3, **params: object) -> dict:
    return {"name": name, "kind": kind, "params": params, "micro_batch_size": 8,
            "resources": {"actors": 2, "num_cpus": 0.25, "batch_timeout_s": timeout_s, "max_part_attempts": attempts}}


def _config(source: Path, sim: dict | None = None) -> dict:
    return pipeline_config(
        source, num_shards=4, part_size=24,
        stages=[_stage("prefilter", "prefilter"), sim or _stage("sim", "simulate", latency_base_s=0.1),
                _stage("normalize", "normalize")],
        exports=[{"name": "Out", "stage": "normalize"}],
    )


def _run(cfg: dict, run: Path) -> Any:
    return execute(parse_config(cfg, base_dir=None, origin="test"), str(run), command="pytest")


class _Background:
    """A run (an in-process driver) on a thread, so faults can be injected while it goes."""

    def __init__(self, cfg: dict, run: Path):
        self.result: Any = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._go, args=(cfg, run), daemon=True)
        self.thread.start()

    def _go(self, cfg: dict, run: Path) -> None:
        try:
            self.result = _run(cfg, run)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc

    def join(self, timeout: float = 180) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the run did not end within {timeout:.0f}s"

    @property
    def running(self) -> bool:
        return self.thread.is_alive()


Expected = dict[str, list[str]]


def _ids(run: Path) -> Expected:
    return {stage: sorted(committed_ids(run, stage)) for stage in STAGES}


def _check(run: Path, expected: Expected, what: str) -> None:
    """The trial's end state: exactly the clean run's ids, counts that reconcile, verify clean."""
    rundir = RunDir(str(run))
    for stage in STAGES:
        ids = committed_ids(run, stage)
        dupes = [i for i, n in Counter(ids).items() if n > 1]
        assert not dupes, f"{what}: {stage} has duplicates {dupes[:3]}"
        assert sorted(ids) == expected[stage], f"{what}: {stage} ids differ from the clean run"
    status = {s.name: s for s in run_status(rundir).stages}
    for upstream, stage in zip(STAGES, STAGES[1:]):
        rejected = rundir.read_rejected(stage)
        rejected_ids = rejected.column("id").to_pylist() if rejected is not None else []
        assert sorted(committed_ids(run, stage) + rejected_ids) == expected[upstream], f"{what}: {stage} lost or invented ids"
        assert status[stage].rows_in == status[upstream].rows_out, f"{what}: {stage} rows in"
    for stage in STAGES:
        s = status[stage]
        assert s.rows_in == s.rows_out + s.rows_rejected and s.shards_sealed == 4, f"{what}: {stage} counts"
    exported = pq.read_table(run / "datasets" / "Out" / "data", columns=["id"]).column("id").to_pylist()
    assert sorted(exported) == expected["normalize"], f"{what}: the export differs"
    assert [str(p) for p in verify(rundir)] == [], what


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dialogues(tmp_path_factory.mktemp("faults") / "in.json", DIALOGUES, bad_every=9)


@pytest.fixture(scope="module")
def clean(source: Path, tmp_path_factory: pytest.TempPathFactory, ray_connected: str) -> tuple[Expected, float]:
    """The reference: ids of every stage of a run without faults, and its duration."""
    run = tmp_path_factory.mktemp("clean") / "run"
    started = time.monotonic()
    _run(_config(source), run)
    expected = _ids(run)
    assert len(expected["normalize"]) > DIALOGUES // 2
    return expected, time.monotonic() - started


# -- SIGKILL of a stage's actors ----------------------------------------------------------

def _stage_actor_pids(stage: str) -> list[int]:
    """PIDs of the live actors of `stage` (named `<session>/<stage>/<index>` by the scheduler)."""
    import ray
    from ray.exceptions import GetTimeoutError, RayError

    pids = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["name"].split("/")[1:2] != [stage]:
            continue
        try:
            handle = ray.get_actor(entry["name"], namespace=entry["namespace"])
            pids.append(int(ray.get(handle.ready.remote(), timeout=10).rsplit(":", 1)[1]))
        except (ValueError, GetTimeoutError, RayError):
            continue  # gone meanwhile (the run ended, or it was restarting)
    return pids


def _workers(title: str) -> list[int]:
    """PIDs of the worker processes of this test session's own Ray node whose title matches
    the regex `title` (other clusters may run on the machine: only the children of our
    raylet count)."""
    import ray

    socket_name = ray.nodes()[0]["RayletSocketName"]
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and cmdline[0].endswith("raylet") and any(socket_name in arg for arg in cmdline):
            pids = []
            for child in proc.children(recursive=True):
                try:
                    if re.fullmatch(title, (child.cmdline() or [""])[0].strip()):
                        pids.append(child.pid)
                except psutil.Error:
                    continue  # exited meanwhile, or a zombie of an earlier kill
            return pids
    raise AssertionError("the test session's raylet was not found")


def _kill(pids: list[int]) -> int:
    killed = 0
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    return killed


def _kill_trial(stage: str, cfg: dict, expected: Expected, duration: float, tmp: Path, rng: random.Random) -> int:
    """SIGKILL one or all actors of `stage` (for ingest: its planner) at a random moment of
    a run; the run itself must absorb it (actors are restarted and their micro-batches
    redone, a planner is retried), with no resume. Returns how many processes were killed."""
    run = tmp / f"kill-{stage}-{rng.random():.8f}"
    driver = _Background(cfg, run)
    killed = 0
    if stage == INGEST:
        delay = rng.uniform(0, 0.5)
        while driver.running and not killed and time.monotonic() - driver.started < 30:
            pids = _workers(r"ray::plan_ingest")
            if pids:
                time.sleep(delay)
                killed = _kill(pids)
            time.sleep(0.02)
    else:
        # From the moment the stage has actors (their start-up takes longer on a loaded
        # machine than in the clean run), a random moment in the first part of the run.
        pids = []
        while driver.running and not pids and time.monotonic() - driver.started < 60:
            pids = _stage_actor_pids(stage)
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 0.3 * duration))
        pids = (_stage_actor_pids(stage) or pids) if driver.running else []
        killed = _kill(pids if rng.random() < 0.5 else pids[:1])
    driver.join()
    what = f"{stage}: {killed} process(es) killed"
    assert driver.error is None, f"{what}: the run stopped: {driver.error!r}"
    _check(run, expected, what)
    return killed


@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_a_stages_actors_at_a_random_moment(stage: str, source: Path, clean, tmp_path: Path) -> None:
    expected, duration = clean
    killed = _kill_trial(stage, _config(source), expected, duration, tmp_path, random.Random(f"quick-{stage}"))
    assert killed >= 1, f"no {stage} process was found to kill"


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_a_stages_actors_trials(stage: str, source: Path, clean, tmp_path: Path) -> None:
    expected, duration = clean
    rng = random.Random(f"slow-{stage}")
    kills = [_kill_trial(stage, _config(source), expected, duration, tmp_path, rng) for _ in range(4)]
    assert sum(1 for k in kills if k) >= 3, f"too few trials found a {stage} process to kill: {kills}"


def test_an_actor_killed_while_it_starts_is_asked_again(source: Path, clean, tmp_path: Path) -> None:
    """An actor killed before it is ready is no engine that cannot load: the run goes on."""
    expected, _ = clean
    cfg = _config(source, _stage("sim", "simulate", latency_base_s=0.1, load_s=3))
    run = tmp_path / "run"
    driver = _Background(cfg, run)
    pids: list[int] = []
    while not pids and time.monotonic() - driver.started < 30:
        # A named actor's title while it starts; the sim stage's engine load takes 3 s.
        pids = _workers(r"ray::\w+/sim/\d+:PartRunner\.__init__")
        time.sleep(0.05)
    assert _kill(pids) >= 1
    driver.join()
    assert driver.error is None, repr(driver.error)
    _check(run, expected, "sim actors killed while loading")


def test_a_run_removes_what_writers_killed_mid_write_left(source: Path, clean, tmp_path: Path) -> None:
    """Regression: a run that absorbed a killed worker finished with the worker's temp file
    and unmarked part on disk (`verify` reported them until a resume). Here they are put
    there mid-run, as a worker SIGKILLed between its writes leaves them."""
    expected, _ = clean
    run = tmp_path / "run"
    driver = _Background(_config(source), run)
    commits: dict = {}
    while not commits and driver.running:
        commits = RunDir(str(run)).commits("sim")
        time.sleep(0.02)
    shard = (run / next(iter(commits.values())).output.path).parent
    (shard / ".tmp-0123abcd-part-00001.parquet").write_bytes(b"half a part")
    (shard / "part-00077.parquet").write_bytes(b"a part with no marker")
    driver.join()
    assert driver.error is None and driver.result.cleaned >= 2
    _check(run, expected, "leftovers of a killed writer")


# -- engine hangs --------------------------------------------------------------------------

def _hang_config(source: Path, trace: Path, hung: list[str], times: int, attempts: int = 3) -> dict:
    trace.mkdir(parents=True, exist_ok=True)
    sim = _stage("sim", "simulate", timeout_s=1.5, attempts=attempts, latency_base_s=0.1, hang_ids=hung,
                 hang_times=times, hang_s=120, trace_dir=str(trace))
    return _config(source, sim)


def _hang_once_trial(source: Path, expected: Expected, tmp: Path, rng: random.Random) -> None:
    """Some micro-batches hang on their first call(s): each times out, its actor restarts,
    the micro-batch is redone, and the run ends with every id exactly once."""
    trial = tmp / f"hang-{rng.random():.8f}"
    hung = rng.sample(expected["prefilter"], rng.choice([1, 2]))
    times = rng.choice([1, 2])
    result = _run(_hang_config(source, trial / "trace", hung, times), trial / "run")
    traced = Counter(line for f in (trial / "trace").glob("*.txt") for line in f.read_text().splitlines())
    assert all(traced[i] == times + 1 for i in hung), f"each hung batch is called {times} + 1 times: {traced}"
    assert result.rows_processed["sim"] >= len(expected["prefilter"])
    _check(trial / "run", expected, f"{hung} hung {times} time(s)")


def _hang_always_trial(source: Path, expected: Expected, tmp: Path, rng: random.Random) -> None:
    """A micro-batch that hangs on every call stops the run once its attempts are spent,
    with an error that says so; the run then goes on, without the fault, exactly once."""
    trial = tmp / f"hang-always-{rng.random():.8f}"
    hung = rng.sample(expected["prefilter"], 1)
    started = time.monotonic()
    with pytest.raises(PipelineError, match=r"failed 2 times; last error: timed out after 2s \(batch_timeout_s\)"):
        _run(_hang_config(source, trial / "trace", hung, 0, attempts=2), trial / "run")
    assert time.monotonic() - started < 60
    assert {p.what.split(" ")[0] for p in verify(RunDir(str(trial / "run")))} <= {"uncommitted"}
    _run(_config(source), trial / "run")
    _check(trial / "run", expected, f"{hung} hung on every call, then ran without the fault")


def test_engine_hangs_then_the_retry_succeeds(source: Path, clean, tmp_path: Path) -> None:
    _hang_once_trial(source, clean[0], tmp_path, random.Random("hang-quick"))


def test_engine_hangs_every_time_stops_the_run_then_runs_without_the_fault(source: Path, clean, tmp_path: Path) -> None:
    _hang_always_trial(source, clean[0], tmp_path, random.Random("hang-always-quick"))


@pytest.mark.slow
def test_engine_hang_trials(source: Path, clean, tmp_path: Path) -> None:
    rng = random.Random("hang-slow")
    for _ in range(4):
        _hang_once_trial(source, clean[0], tmp_path, rng)
    for _ in range(2):
        _hang_always_trial(source, clean[0], tmp_path, rng)


# -- an engine that returns garbage --------------------------------------------------------

GARBAGE_STAGES = (INGEST, "prefilter", "judge", "normalize")
GARBAGE_REASONS = {"llm_filter.judged_out", "llm_filter.unparseable", "llm_filter.truncated", "llm_filter.error"}


def _garbage_config(source: Path, url: str) -> dict:
    engine = {"kind": "openai", "model": "garbage", "base_url": url, "max_retries": 1, "request_timeout_s": 10}
    judge = _stage("judge", "llm_filter", engine=engine, max_attempts=2)
    return pipeline_config(source, num_shards=4, part_size=24,
                           stages=[_stage("prefilter", "prefilter"), judge, _stage("normalize", "normalize")])


def _outcome(run: Path) -> dict[str, Any]:
    """Every stage's ids and the judge's rejections (id → reason)."""
    rejected = RunDir(str(run)).read_rejected("judge")
    return {**{stage: sorted(committed_ids(run, stage)) for stage in GARBAGE_STAGES},
            "rejected": dict(zip(rejected.column("id").to_pylist(), rejected.column("reason").to_pylist()))
            if rejected is not None else {}}


@pytest.fixture(scope="module")
def garbage(source: Path, tmp_path_factory: pytest.TempPathFactory, ray_connected: str):
    """A garbage endpoint and the outcome of an uninterrupted run against it."""
    from tests.llm_servers import GarbageServer

    server = GarbageServer(salt=1)
    run = tmp_path_factory.mktemp("garbage") / "run"
    started = time.monotonic()
    _run(_garbage_config(source, server.url), run)
    duration = time.monotonic() - started
    yield server, _outcome(run), duration, run
    server.close()


def test_engine_garbage_is_rejected_with_reason_codes_never_lost(garbage) -> None:
    server, outcome, _, run = garbage
    assert set(server.served) >= {"keep", "not_json", "wrong_shape", "truncated", "not_a_completion", "not_json_body"}
    rejected = outcome["rejected"]
    assert set(rejected.values()) <= GARBAGE_REASONS and {"llm_filter.unparseable", "llm_filter.error"} <= set(rejected.values())
    # Every dialogue the judge got is passed on or rejected, never both, never neither.
    assert not set(outcome["judge"]) & set(rejected)
    assert sorted(outcome["judge"] + list(rejected)) == outcome["prefilter"]
    assert outcome["normalize"] == outcome["judge"] and outcome["judge"]
    rows = RunDir(str(run)).read_rejected("judge").to_pylist()
    assert all(r["raw_output"] is not None for r in rows if r["reason"] == "llm_filter.unparseable")
    assert all(r["detail"] for r in rows)
    status = {s.name: s for s in run_status(RunDir(str(run))).stages}
    assert status["judge"].rows_in == status["judge"].rows_out + status["judge"].rows_rejected
    assert verify(RunDir(str(run))) == []


def _garbage_kill_trial(garbage: Any, source: Path, tmp: Path, rng: random.Random) -> None:
    """Garbage answers and the judge's actors SIGKILLed: the same outcome as without kills."""
    server, expected, duration, _ = garbage
    run = tmp / f"garbage-{rng.random():.8f}"
    driver = _Background(_garbage_config(source, server.url), run)
    time.sleep(rng.uniform(0.1, 0.75 * duration))
    killed = _kill(_stage_actor_pids("judge") if driver.running else [])
    driver.join()
    assert driver.error is None, f"{killed} judge actor(s) killed: the run stopped: {driver.error!r}"
    assert _outcome(run) == expected
    assert verify(RunDir(str(run))) == []


@pytest.mark.slow
def test_engine_garbage_with_killed_actors_trials(garbage, source: Path, tmp_path: Path) -> None:
    rng = random.Random("garbage-slow")
    for _ in range(4):
        _garbage_kill_trial(garbage, source, tmp_path, rng)


# -- a full disk ---------------------------------------------------------------------------

def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(f"/tmp/speechmed-tmpfs-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True).returncode:
            return False
        subprocess.run(["umount", str(probe)], check=True)
        return True
    finally:
        probe.rmdir()


needs_tmpfs = pytest.mark.skipif(not _can_mount(), reason="a full disk is a small tmpfs: needs root and mount "
                                 "(test_a_full_disk_at_the_filesystem_boundary covers the storage side without)")


class _Tmpfs:
    """A tmpfs of `size` bytes at `path`: a disk that fills up; `grow` frees space."""

    def __init__(self, path: Path, size: int):
        self.path = path
        path.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)

    def grow(self, size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def used(self) -> int:
        return shutil.disk_usage(self.path).used

    def close(self) -> None:
        subprocess.run(["umount", "--lazy", str(self.path)], check=True)


def _speechmed(*args: str, address: str) -> subprocess.CompletedProcess:
    return subprocess.run(["speechmed", *args, "--address", address, "--json"], capture_output=True, text=True,
                          timeout=180)


@pytest.fixture(scope="module")
def disk_config(source: Path, tmp_path_factory: pytest.TempPathFactory, ray_address: str) -> tuple[Path, int]:
    """The config as a file (the CLI runs it) and the space a clean run takes on a tmpfs."""
    tmp = tmp_path_factory.mktemp("disk")
    config = tmp / "pipeline.yaml"
    config.write_text(yaml.safe_dump(_config(source), allow_unicode=True), encoding="utf-8")
    disk = _Tmpfs(tmp / "big", 64 << 20)
    try:
        done = _speechmed("run", str(config), "--run", str(disk.path / "run"), address=ray_address)
        assert done.returncode == 0, done.stderr
        return config, disk.used()
    finally:
        disk.close()


def _full_disk_trial(config: Path, needed: int, expected: Expected, tmp: Path, address: str, rng: random.Random) -> bool:
    """Run on a disk that fills at a random point: the run stops at once with an error that
    names the run and says what to do; committed work is intact; once space is freed a
    resume finishes exactly once. Returns whether the disk did fill."""
    size = 4096 * max(1, int(rng.uniform(0.0, 1.0) * needed / 4096))
    disk = _Tmpfs(tmp / f"disk-{rng.random():.8f}", size)
    run = disk.path / "run"
    try:
        started = time.monotonic()
        first = _speechmed("run", str(config), "--run", str(run), address=address)
        elapsed = time.monotonic() - started
        if first.returncode != 0:
            what = f"a {size}-byte disk"
            assert first.returncode == 1, f"{what}: {first.stderr[-3000:]}"
            assert "no space left on the storage of run" in first.stderr and str(run) in first.stderr, first.stderr[-3000:]
            assert f"speechmed resume {run}" in first.stderr and "Traceback" not in first.stderr, first.stderr[-3000:]
            assert elapsed < 90, f"{what}: stopping took {elapsed:.0f}s"
            problems = verify(RunDir(str(run))) if (run / "run.json").exists() else []
            assert all("uncommitted leftover" in p.what for p in problems), [str(p) for p in problems]
            disk.grow(64 << 20)
            args = ("resume", str(run)) if (run / "run.json").exists() else ("run", str(config), "--run", str(run))
            second = _speechmed(*args, address=address)
            assert second.returncode == 0, f"{what}, then grown: {second.stderr[-3000:]}"
        _check(run, expected, f"a {size}-byte disk")
        return first.returncode != 0
    finally:
        disk.close()


@needs_tmpfs
def test_full_disk_stops_the_run_clearly_then_resume_finishes(disk_config, clean, tmp_path: Path, ray_address: str) -> None:
    config, needed = disk_config
    rng = random.Random("disk-quick")
    assert _full_disk_trial(config, needed // 2, clean[0], tmp_path, ray_address, rng)


@pytest.mark.slow
@needs_tmpfs
def test_full_disk_trials(disk_config, clean, tmp_path: Path, ray_address: str) -> None:
    config, needed = disk_config
    rng = random.Random("disk-slow")
    filled = [_full_disk_trial(config, needed, clean[0], tmp_path, ray_address, rng) for _ in range(6)]
    assert sum(filled) >= 4, filled


@needs_tmpfs
def test_a_lock_that_cannot_be_written_is_not_left_behind(tmp_path: Path) -> None:
    """Regression: on a full disk the lock file was created but left empty, and the next
    driver was refused ("keeps changing hands") until it was 5 s old."""
    disk = _Tmpfs(tmp_path / "disk", 4096)
    try:
        (disk.path / "run").mkdir()
        filler = disk.path / "filler"
        with pytest.raises(OSError):
            filler.write_bytes(b"x" * 8192)
        rundir = RunDir(str(disk.path / "run"))
        with pytest.raises(OSError) as raised:
            rundir.lock().acquire("pytest")
        assert is_storage_full(raised.value)
        assert not (disk.path / "run" / "_LOCK").exists()
        filler.unlink()
        lock = rundir.lock()
        lock.acquire("pytest again")  # at once, no grace period
        lock.release()
    finally:
        disk.close()


# -- the storage side of a full disk, without root ----------------------------------------

class _FullDisk(pafs.FileSystemHandler):
    """A local folder that refuses writes past `capacity` bytes with ENOSPC, as a full disk
    does: a test double at the filesystem boundary, for machines that cannot mount a tmpfs."""

    def __init__(self, capacity: int):
        self.local = pafs.LocalFileSystem()
        self.left = capacity

    def get_type_name(self) -> str:
        return "full-disk-double"

    def equals(self, other: Any) -> bool:
        return other is self

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.local.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.local.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise AssertionError("the pipeline never empties a filesystem's root: an unexpected call")

    def delete_file(self, path: str) -> None:
        self.local.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.local.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.local.copy_file(src, dest)

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self.local.open_input_stream(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self.local.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return pa.PythonFile(_Quota(path, self), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        raise AssertionError("the pipeline never appends to a file (it writes whole objects): an unexpected call")

    def normalize_path(self, path: str) -> str:
        return path


class _Quota(io.FileIO):
    def __init__(self, path: str, disk: _FullDisk):
        super().__init__(path, "wb")
        self.disk = disk

    def write(self, data: Any) -> int:
        data = bytes(data)
        if len(data) > self.disk.left:
            super().write(data[: self.disk.left])
            self.disk.left = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.name)
        self.disk.left -= len(data)
        return super().write(data)


@pytest.mark.parametrize("capacity", [100, 3000, 6000])
def test_a_full_disk_at_the_filesystem_boundary(tmp_path: Path, capacity: int) -> None:
    """A commit refused for space commits nothing, is recognised as a full disk, and leaves
    only what `verify` calls uncommitted leftovers (which resume removes)."""
    from tests.test_storage import dialogues, rejections

    rundir = RunDir(str(tmp_path / "run"))
    rundir.loc = Location(pafs.PyFileSystem(_FullDisk(capacity)), str(tmp_path / "run"), f"full-disk://{tmp_path}/run")
    with pytest.raises(OSError) as raised:
        rundir.commit_part(INGEST, 0, 0, dialogues(40), rejections(40), fingerprint="fp", rows_in=80,
                           rejected_by_reason={"ingest.malformed": 40}, elapsed_s=0.1, session="s", fence=None)
    assert is_storage_full(raised.value)
    assert "no space left on the storage of run" in str(StorageFull.of(rundir.uri, raised.value))
    assert rundir.commits(INGEST) == {}
    assert all("uncommitted leftover" in p.what for p in verify(rundir))
    rundir.clean_uncommitted(INGEST)
    assert not [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
