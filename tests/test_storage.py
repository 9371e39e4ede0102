"""The run directory: atomic part commits, leftovers, seals, the run lock and fencing,
verify() and the manifest. Real files under tmp_path, real Parquet.

Every commit test runs twice: on the local filesystem (temp name + atomic rename) and on a
`SubTreeFileSystem` whose type is not "local", so `write_bytes` takes its object-store
branch (one direct write, the commit marker is the commit point).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from schemas import Rejection, SourceDialogue, Turn, from_table, record_id, to_table
from storage.fs import Location, is_temp, write_bytes
from storage.lock import LOCK_NAME, LockInfo, RunLocked, holds_lock
from storage.manifest import MANIFEST_SCHEMA, write_manifest
from storage.markers import RunInfo, ShardSeal, StageStamp
from storage.rundir import MANIFEST, CommitRefused, RunDir, parquet_bytes
from storage.verify import verify

STAGE = "ingest"


# -- helpers -----------------------------------------------------------------------------

def make_rundir(tmp_path: Path, kind: str) -> RunDir:
    """A run directory at tmp_path/run, on the local filesystem or on a non-local one."""
    if kind == "local":
        return RunDir(str(tmp_path / "run"))
    rundir = RunDir(str(tmp_path / "run"))
    rundir.loc = Location(pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem()), "run", f"subtree://{tmp_path}/run")
    assert not rundir.loc.atomic_rename
    return rundir


@pytest.fixture(params=["local", "subtree"])
def rundir(request, tmp_path) -> RunDir:
    return make_rundir(tmp_path, request.param)


def dialogues(n: int, start: int = 0) -> pa.Table:
    return to_table([
        SourceDialogue(id=record_id("src", str(i)), source="src", source_key=str(i),
                       turns=[Turn(role="patient", text=f"我头疼{i}天了"), Turn(role="doctor", text="发烧吗？")])
        for i in range(start, start + n)
    ], SourceDialogue)


def rejections(n: int, start: int = 0) -> pa.Table:
    return to_table([
        Rejection(id=record_id("src", f"r{i}"), stage=STAGE, reason="ingest.malformed", record_json="{}")
        for i in range(start, start + n)
    ], Rejection)


def commit(rundir: RunDir, shard: int = 0, part: int = 0, rows: int = 3, rejected: int = 0, *,
           stage: str = STAGE, fingerprint: str = "fp-ingest", fence: str | None = None, start: int = 0):
    return rundir.commit_part(
        stage, shard, part, dialogues(rows, start), rejections(rejected, start) if rejected else None,
        fingerprint=fingerprint, rows_in=rows + rejected,
        rejected_by_reason={"ingest.malformed": rejected} if rejected else {},
        elapsed_s=0.01, session="test-session", fence=fence,
    )


def seal_for(rundir: RunDir, shard: int, *, stage: str = STAGE, fingerprint: str = "fp-ingest") -> ShardSeal:
    parts = sorted(rundir.commits(stage, shard).items())
    return ShardSeal(
        stage=stage, shard=shard, fingerprint=fingerprint, parts=len(parts),
        rows_in=sum(c.rows_in for _, c in parts), rows_out=sum(c.rows_out for _, c in parts),
        rows_rejected=sum(c.rows_rejected for _, c in parts), sealed_at=time.time(),
    )


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def part_files(shard: int, part: int, rejected: bool = False, stage: str = STAGE) -> set[str]:
    base = f"{stage}/shard-{shard:05d}/part-{part:05d}"
    files = {f"{base}.parquet", f"{base}.commit.json"}
    if rejected:
        files.add(f"{stage}/rejected/shard-{shard:05d}/part-{part:05d}.parquet")
    return files


# -- commits -----------------------------------------------------------------------------

def test_commit_part_writes_data_rejected_and_marker(rundir, tmp_path):
    c = commit(rundir, shard=3, part=1, rows=4, rejected=2)
    assert files_under(tmp_path / "run") == part_files(3, 1, rejected=True)
    assert (c.rows_in, c.rows_out, c.rows_rejected) == (6, 4, 2)
    assert c.rejected_by_reason == {"ingest.malformed": 2}
    assert c.output.path == "ingest/shard-00003/part-00001.parquet"
    assert c.output.bytes == (tmp_path / "run" / c.output.path).stat().st_size
    assert rundir.commits(STAGE) == {(3, 1): c}
    assert rundir.commits(STAGE, shard=3) == {(3, 1): c}
    assert rundir.commits(STAGE, shard=2) == {}
    # the part and the reject file are readable Parquet with the record schemas
    out = pq.read_table(rundir.abs(c.output.path), filesystem=rundir.loc.fs)
    assert from_table(out, SourceDialogue) == from_table(dialogues(4), SourceDialogue)
    assert rundir.read_rejected(STAGE).num_rows == 2


def test_commit_without_rejections_writes_no_rejected_file(rundir, tmp_path):
    c = commit(rundir, rows=2)
    assert c.rejected is None and c.rows_rejected == 0
    assert files_under(tmp_path / "run") == part_files(0, 0)
    assert rundir.read_rejected(STAGE) is None


def test_read_output_concatenates_parts_in_order(rundir):
    commit(rundir, part=0, rows=2, start=0)
    commit(rundir, part=1, rows=3, start=10)
    table = rundir.read_output(STAGE, 0, 2)
    assert table.column("source_key").to_pylist() == ["0", "1", "10", "11", "12"]
    empty = rundir.read_output(STAGE, 5, 0, schema=dialogues(0).schema)
    assert empty.num_rows == 0 and empty.schema == dialogues(0).schema


def test_write_bytes_leaves_no_temp_files(rundir, tmp_path):
    commit(rundir, rows=2, rejected=1)
    rundir.write_model("run.json", RunInfo(config={}, seed=1, fingerprints={}, code_version="t",
                                           created_at=0, updated_at=0))
    assert not [f for f in files_under(tmp_path / "run") if is_temp(f)]


def test_write_bytes_overwrites_in_place(rundir, tmp_path):
    path = rundir.abs("a/b/c.bin")
    write_bytes(rundir.loc, path, b"one")
    write_bytes(rundir.loc, path, b"two!")
    assert (tmp_path / "run/a/b/c.bin").read_bytes() == b"two!"
    assert files_under(tmp_path / "run") == {"a/b/c.bin"}


def test_recommit_overwrites_without_duplicates(rundir, tmp_path):
    commit(rundir, rows=2, rejected=1)
    second = commit(rundir, rows=5, rejected=1, start=100)
    assert files_under(tmp_path / "run") == part_files(0, 0, rejected=True)
    assert rundir.commits(STAGE) == {(0, 0): second}
    assert rundir.read_output(STAGE, 0, 1).num_rows == 5
    assert rundir.clean_uncommitted(STAGE) == []


def test_recommit_without_rejections_leaves_no_stale_rejected_file(rundir, tmp_path):
    commit(rundir, rows=2, rejected=2)
    second = commit(rundir, rows=4)
    assert files_under(tmp_path / "run") == part_files(0, 0)
    assert rundir.commits(STAGE) == {(0, 0): second}
    assert rundir.read_rejected(STAGE) is None
    assert rundir.clean_uncommitted(STAGE) == []


# -- leftovers -----------------------------------------------------------------------------

def _tmp_file(rundir: RunDir, run: Path) -> set[str]:
    path = run / STAGE / "shard-00000" / ".tmp-0123abcd-part-00001.parquet"
    path.write_bytes(b"half a parquet file")
    return {str(path.relative_to(run))}


def _part_without_marker(rundir: RunDir, run: Path) -> set[str]:
    rundir.write_bytes_rel(rundir.part_path(STAGE, 0, 1), parquet_bytes(dialogues(2)))
    rundir.write_bytes_rel(rundir.rejected_path(STAGE, 0, 1), parquet_bytes(rejections(1)))
    return {rundir.part_path(STAGE, 0, 1), rundir.rejected_path(STAGE, 0, 1)}


def _marker_with_missing_data(rundir: RunDir, run: Path) -> set[str]:
    commit(rundir, part=1, rows=2, rejected=1)
    (run / rundir.part_path(STAGE, 0, 1)).unlink()
    return {rundir.commit_path(STAGE, 0, 1), rundir.rejected_path(STAGE, 0, 1)}


def _marker_with_wrong_size(rundir: RunDir, run: Path) -> set[str]:
    commit(rundir, part=1, rows=2)
    with open(run / rundir.part_path(STAGE, 0, 1), "ab") as f:
        f.write(b"garbage")
    return {rundir.commit_path(STAGE, 0, 1), rundir.part_path(STAGE, 0, 1)}


def _marker_with_missing_rejected_file(rundir: RunDir, run: Path) -> set[str]:
    commit(rundir, part=1, rows=2, rejected=1)
    (run / rundir.rejected_path(STAGE, 0, 1)).unlink()
    return {rundir.commit_path(STAGE, 0, 1), rundir.part_path(STAGE, 0, 1)}


def _unreadable_marker(rundir: RunDir, run: Path) -> set[str]:
    commit(rundir, part=1, rows=2)
    marker = run / rundir.commit_path(STAGE, 0, 1)
    marker.write_bytes(marker.read_bytes()[:40])
    return {rundir.commit_path(STAGE, 0, 1), rundir.part_path(STAGE, 0, 1)}


LEFTOVERS = [_tmp_file, _part_without_marker, _marker_with_missing_data, _marker_with_wrong_size,
             _marker_with_missing_rejected_file, _unreadable_marker]


@pytest.mark.parametrize("make_leftover", LEFTOVERS, ids=lambda f: f.__name__.strip("_"))
def test_leftovers_are_ignored_then_cleaned(rundir, tmp_path, make_leftover):
    run = tmp_path / "run"
    good = commit(rundir, part=0, rows=3, rejected=1)
    rundir.write_stamp(StageStamp(stage=STAGE, kind="ingest", fingerprint="fp-ingest", shards=1, created_at=0))
    leftovers = make_leftover(rundir, run)
    assert leftovers <= files_under(run)

    assert rundir.commits(STAGE) == {(0, 0): good}
    assert rundir.commits(STAGE, shard=0) == {(0, 0): good}

    removed = rundir.clean_uncommitted(STAGE)
    assert set(removed) == leftovers
    assert files_under(run) == part_files(0, 0, rejected=True) | {f"{STAGE}/_STAGE.json"}
    assert rundir.commits(STAGE) == {(0, 0): good}
    assert rundir.clean_uncommitted(STAGE) == []


def test_clean_uncommitted_keeps_seals_stamps_and_foreign_files(rundir, tmp_path):
    commit(rundir, rows=1)
    rundir.seal(seal_for(rundir, 0))
    rundir.write_stamp(StageStamp(stage=STAGE, kind="ingest", fingerprint="fp-ingest", shards=1, created_at=0))
    (tmp_path / "run" / STAGE / "notes.txt").write_text("mine")
    before = files_under(tmp_path / "run")
    assert rundir.clean_uncommitted(STAGE) == []
    assert files_under(tmp_path / "run") == before


# -- seals and stamps ----------------------------------------------------------------------

def test_seal_and_seals(rundir, tmp_path):
    commit(rundir, shard=0, part=0, rows=2, rejected=1)
    commit(rundir, shard=0, part=1, rows=3)
    commit(rundir, shard=1, part=0, rows=1)
    assert rundir.seals(STAGE) == {}
    s0, s1 = seal_for(rundir, 0), seal_for(rundir, 1)
    rundir.seal(s0)
    rundir.seal(s1)
    assert rundir.seals(STAGE) == {0: s0, 1: s1}
    assert (s0.parts, s0.rows_in, s0.rows_out, s0.rows_rejected) == (2, 6, 5, 1)
    assert (tmp_path / "run" / STAGE / "shard-00000" / "_SEALED").is_file()
    assert rundir.seals("other") == {}


def test_stamp_run_info_and_stages_on_disk(rundir):
    assert not rundir.exists() and rundir.run_info() is None and rundir.stamp(STAGE) is None
    info = RunInfo(config={"seed": 1}, seed=1, fingerprints={STAGE: "fp"}, code_version="t", created_at=1, updated_at=2)
    rundir.write_model("run.json", info)
    stamp = StageStamp(stage=STAGE, kind="ingest", fingerprint="fp", shards=4, created_at=3)
    rundir.write_stamp(stamp)
    commit(rundir, stage="nostamp")
    assert rundir.exists() and rundir.run_info() == info and rundir.stamp(STAGE) == stamp
    assert rundir.stages_on_disk() == [STAGE]


def test_invalidate_removes_a_stage(rundir, tmp_path):
    commit(rundir, rows=1, rejected=1)
    commit(rundir, stage="keep")
    rundir.invalidate(STAGE)
    assert rundir.commits(STAGE) == {}
    assert files_under(tmp_path / "run") == part_files(0, 0, stage="keep")
    rundir.invalidate("absent")  # no error


# -- fencing --------------------------------------------------------------------------------

def test_commit_with_a_fence_that_lost_the_lock_is_refused(rundir, tmp_path):
    old = rundir.lock()
    token = old.acquire("old driver")
    commit(rundir, part=0, fence=token)  # holds the lock: accepted
    old.release()
    with pytest.raises(CommitRefused, match="no longer holds the lock"):
        commit(rundir, part=1, fence=token)
    assert not (tmp_path / "run" / rundir.commit_path(STAGE, 0, 1)).exists()
    assert set(rundir.commits(STAGE)) == {(0, 0)}

    new = rundir.lock()
    new_token = new.acquire("new driver")
    try:
        with pytest.raises(CommitRefused):
            commit(rundir, part=1, fence=token)
        assert set(rundir.commits(STAGE)) == {(0, 0)}
        commit(rundir, part=1, fence=new_token)
        assert set(rundir.commits(STAGE)) == {(0, 0), (0, 1)}
    finally:
        new.release()


def test_a_refused_commit_does_not_clobber_the_new_drivers_part(rundir, tmp_path):
    """A zombie worker of a driver that lost the lock re-executes a part the new driver has
    already committed: the committed part must stay intact."""
    lock = rundir.lock()
    stale_token = lock.acquire("old driver")
    lock.release()
    new = rundir.lock()
    new_token = new.acquire("new driver")
    try:
        committed = commit(rundir, part=0, rows=2, fence=new_token)
        before = (tmp_path / "run" / committed.output.path).read_bytes()
        with pytest.raises(CommitRefused):
            commit(rundir, part=0, rows=7, rejected=2, fence=stale_token, start=50)
        assert (tmp_path / "run" / committed.output.path).read_bytes() == before
        assert rundir.commits(STAGE) == {(0, 0): committed}
        assert verify_problems(rundir) == []
    finally:
        new.release()


def verify_problems(rundir: RunDir) -> list[str]:
    if rundir.stamp(STAGE) is None:
        rundir.write_stamp(StageStamp(stage=STAGE, kind="ingest", fingerprint="fp-ingest", shards=1, created_at=0))
    return [str(p) for p in verify(rundir)]


# -- the run lock ---------------------------------------------------------------------------

@pytest.fixture
def lock_dir(tmp_path) -> RunDir:
    return RunDir(str(tmp_path / "run"))


def write_lock(rundir: RunDir, **fields) -> LockInfo:
    now = time.time()
    info = LockInfo(**({"token": "foreign-token", "host": socket.gethostname(), "pid": os.getpid(),
                        "pid_started": psutil.Process().create_time(), "command": "speechmed run other.yaml",
                        "started_at": now, "heartbeat_at": now} | fields))
    path = Path(rundir.loc.path(LOCK_NAME))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(info.model_dump_json())
    return info


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    if psutil.pid_exists(proc.pid):  # reused already: vanishingly rare
        pytest.skip("could not find a free pid")
    return proc.pid


def test_second_acquire_is_refused_naming_the_holder(lock_dir):
    first = lock_dir.lock()
    first.acquire("speechmed run a.yaml")
    try:
        with pytest.raises(RunLocked) as exc:
            lock_dir.lock().acquire("speechmed run b.yaml")
        message = str(exc.value)
        assert f"pid {os.getpid()}" in message
        assert "speechmed run a.yaml" in message
        assert lock_dir.lock().holder().token == first.token
    finally:
        first.release()


def test_release_removes_the_lock(lock_dir, tmp_path):
    lock = lock_dir.lock()
    token = lock.acquire("run")
    assert holds_lock(lock_dir.loc, token)
    lock.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    assert not holds_lock(lock_dir.loc, token)
    with lock_dir.lock() as again:  # free again
        again.acquire("run")
    assert not (tmp_path / "run" / LOCK_NAME).exists()


@pytest.mark.parametrize("holder", [
    pytest.param(lambda: {"pid": dead_pid()}, id="dead-pid"),
    pytest.param(lambda: {"pid_started": 12345.0}, id="pid-reused-by-another-process"),
    pytest.param(lambda: {"host": "elsewhere", "heartbeat_at": time.time() - 3600}, id="other-host-stale-heartbeat"),
])
def test_a_dead_holders_lock_is_taken_over(lock_dir, holder):
    write_lock(lock_dir, **holder())
    lock = lock_dir.lock(stale_after_s=60)
    token = lock.acquire("speechmed resume")
    try:
        assert lock.holder().token == token
        assert holds_lock(lock_dir.loc, token)
        assert not holds_lock(lock_dir.loc, "foreign-token")
    finally:
        lock.release()


def test_other_hosts_lock_with_fresh_heartbeat_is_refused(lock_dir):
    write_lock(lock_dir, host="elsewhere", pid=4242, heartbeat_at=time.time() - 5)
    with pytest.raises(RunLocked) as exc:
        lock_dir.lock(stale_after_s=60).acquire("speechmed resume")
    assert "pid 4242 on elsewhere" in str(exc.value)
    assert lock_dir.lock().holder().token == "foreign-token"


def test_an_empty_lock_file_left_by_a_crash_is_taken_over(lock_dir, tmp_path):
    """A driver that died between creating the lock file and writing it leaves it empty."""
    path = tmp_path / "run" / LOCK_NAME
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    old = time.time() - 120
    os.utime(path, (old, old))
    lock = lock_dir.lock(stale_after_s=60)
    token = lock.acquire("speechmed resume")
    try:
        assert holds_lock(lock_dir.loc, token)
    finally:
        lock.release()


def test_a_lock_file_being_written_right_now_is_not_broken(lock_dir, tmp_path):
    path = tmp_path / "run" / LOCK_NAME
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")  # just created by another driver, not yet written
    with pytest.raises(RunLocked):
        lock_dir.lock().acquire("speechmed run")
    assert path.exists() and path.read_bytes() == b""


def test_heartbeat_keeps_the_lock_fresh(lock_dir):
    lock = lock_dir.lock(heartbeat_s=0.02)
    lock.acquire("run")
    try:
        first = lock.holder().heartbeat_at
        deadline = time.time() + 5
        while lock.holder() is None or lock.holder().heartbeat_at == first:
            assert time.time() < deadline, "heartbeat never refreshed the lock"
            time.sleep(0.01)
        assert lock.holder().token == lock.token
        assert not lock.lost
    finally:
        lock.release()


def test_heartbeat_notices_a_lost_lock_and_release_leaves_the_new_holder(lock_dir, tmp_path):
    lock = lock_dir.lock(heartbeat_s=0.02)
    lock.acquire("run")
    try:
        write_lock(lock_dir, token="usurper")
        deadline = time.time() + 5
        while not lock.lost:
            assert time.time() < deadline, "the heartbeat did not notice the lost lock"
            time.sleep(0.01)
        assert lock.holder().token == "usurper"  # not overwritten by the old heartbeat
    finally:
        lock.release()
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["token"] == "usurper"


def test_lock_on_a_non_local_filesystem(tmp_path):
    rundir = make_rundir(tmp_path, "subtree")
    lock = rundir.lock()
    token = lock.acquire("run")
    try:
        assert holds_lock(rundir.loc, token)
        with pytest.raises(RunLocked, match=f"pid {os.getpid()}"):
            rundir.lock().acquire("other")
    finally:
        lock.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()


# -- verify ---------------------------------------------------------------------------------

def build_run(rundir: RunDir) -> None:
    """A small, consistent run: ingest with 2 sealed shards, prefilter with one open shard."""
    rundir.write_model("run.json", RunInfo(config={"seed": 1}, seed=1,
                                           fingerprints={"ingest": "fp-ingest", "prefilter": "fp-pre"},
                                           code_version="test", created_at=1, updated_at=1))
    rundir.write_stamp(StageStamp(stage="ingest", kind="ingest", fingerprint="fp-ingest", shards=2, created_at=1))
    rundir.write_stamp(StageStamp(stage="prefilter", kind="prefilter", fingerprint="fp-pre", shards=2, created_at=1))
    commit(rundir, shard=0, part=0, rows=3)
    commit(rundir, shard=0, part=1, rows=2, rejected=2, start=10)
    commit(rundir, shard=1, part=0, rows=4, start=20)
    rundir.seal(seal_for(rundir, 0))
    rundir.seal(seal_for(rundir, 1))
    commit(rundir, shard=0, part=0, rows=2, rejected=1, stage="prefilter", fingerprint="fp-pre")


@pytest.fixture
def run(rundir) -> RunDir:
    build_run(rundir)
    return rundir


def test_verify_clean_run(run):
    assert verify(run) == []


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


S0 = "ingest/shard-00000"


def truncate_part(root):
    p = root / S0 / "part-00000.parquet"
    p.write_bytes(p.read_bytes()[:-10])


def delete_part(root):
    (root / S0 / "part-00000.parquet").unlink()


def delete_rejected(root):
    (root / "ingest/rejected/shard-00000/part-00001.parquet").unlink()


def foreign_file(root):
    (root / S0 / "notes.txt").write_text("hello")


def rewrite_part_same_marker(root):
    pq.write_table(dialogues(7, start=100), root / S0 / "part-00000.parquet")


def flip_a_byte(root):
    p = root / S0 / "part-00000.parquet"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


def marker_rows(root):
    _edit_json(root / S0 / "part-00000.commit.json", lambda d: d["output"].update(rows=99))


def seal_rows_out(root):
    _edit_json(root / S0 / "_SEALED", lambda d: d.update(rows_out=d["rows_out"] + 1))


def missing_marker(root):
    (root / S0 / "part-00001.commit.json").unlink()


def other_fingerprint(root):
    _edit_json(root / "ingest/shard-00001/part-00000.commit.json", lambda d: d.update(fingerprint="stale"))


def part_beyond_seal(root):
    (root / S0 / "part-00002.parquet").write_bytes((root / S0 / "part-00000.parquet").read_bytes())
    marker = json.loads((root / S0 / "part-00000.commit.json").read_text())
    marker.update(part=2)
    marker["output"]["path"] = f"{S0}/part-00002.parquet"
    (root / S0 / "part-00002.commit.json").write_text(json.dumps(marker))


def temp_leftover(root):
    (root / S0 / ".tmp-deadbeef-part-00002.parquet").write_bytes(b"partial")


def temp_marker_leftover(root):
    marker = (root / S0 / "part-00000.commit.json").read_bytes()
    (root / S0 / ".tmp-deadbeef-part-00000.commit.json").write_bytes(marker)


def uncommitted_part(root):
    (root / "ingest/shard-00001/part-00001.parquet").write_bytes((root / S0 / "part-00000.parquet").read_bytes())


def corrupt_seal(root):
    (root / "ingest/shard-00001/_SEALED").write_text("{not json")


def corrupt_marker(root):
    (root / S0 / "part-00000.commit.json").write_text("{")


# (corruption, the path the problem names, a fragment of its description)
CORRUPTIONS = [
    (truncate_part, f"{S0}/part-00000.parquet", "marker says"),
    (delete_part, f"{S0}/part-00000.parquet", "missing"),
    (delete_rejected, "ingest/rejected/shard-00000/part-00001.parquet", "missing"),
    (foreign_file, f"{S0}/notes.txt", "foreign file"),
    (rewrite_part_same_marker, f"{S0}/part-00000.parquet", "marker says"),
    (flip_a_byte, f"{S0}/part-00000.parquet", "checksum"),
    (marker_rows, f"{S0}/part-00000.parquet", "rows, marker says 99"),
    (seal_rows_out, f"{S0}/_SEALED", "rows_out"),
    (missing_marker, f"{S0}/_SEALED", "parts [1] have no commit marker"),
    (other_fingerprint, "ingest/shard-00001/part-00000.commit.json", "another fingerprint"),
    (part_beyond_seal, f"{S0}/_SEALED", "beyond the sealed count"),
    (temp_leftover, f"{S0}/.tmp-deadbeef-part-00002.parquet", "uncommitted leftover"),
    (temp_marker_leftover, f"{S0}/.tmp-deadbeef-part-00000.commit.json", "uncommitted leftover"),
    (uncommitted_part, "ingest/shard-00001/part-00001.parquet", "uncommitted leftover"),
    (corrupt_seal, "ingest/shard-00001/_SEALED", "unreadable"),
    (corrupt_marker, f"{S0}/part-00000.commit.json", "unreadable commit marker"),
]


@pytest.mark.parametrize("corrupt, path, what", CORRUPTIONS, ids=[c[0].__name__ for c in CORRUPTIONS])
def test_verify_detects_each_corruption(run, tmp_path, corrupt, path, what):
    corrupt(tmp_path / "run")
    problems = verify(run)
    assert any(p.path == path and what in p.what for p in problems), [str(p) for p in problems]
    # nothing unrelated is reported: every problem is about the corrupted shard's files
    shard = path.rsplit("/", 1)[0].replace("rejected/", "")
    assert all(p.path.replace("rejected/", "").startswith(shard) for p in problems), [str(p) for p in problems]


def test_verify_missing_part_marker_also_reports_its_data_as_leftover(run, tmp_path):
    missing_marker(tmp_path / "run")
    paths = {p.path for p in verify(run)}
    assert paths == {f"{S0}/_SEALED", f"{S0}/part-00001.parquet", "ingest/rejected/shard-00000/part-00001.parquet"}


def test_verify_ignores_top_level_bookkeeping(run, tmp_path):
    write_manifest(run, ["ingest", "prefilter"])
    lock = run.lock()
    lock.acquire("verify test")
    try:
        assert verify(run) == []
    finally:
        lock.release()


def test_verify_reports_files_of_an_unstamped_directory(run, tmp_path):
    (tmp_path / "run" / "scratch").mkdir()
    (tmp_path / "run" / "scratch" / "x.parquet").write_bytes(b"x")
    assert [p.path for p in verify(run)] == ["scratch/x.parquet"]


# -- verify: a whole run's other files (exports, stamps, bookkeeping) -----------------------

@pytest.fixture
def exported(run, tmp_path) -> RunDir:
    """The small run with its plan, its manifest and an export of `ingest` (data, card, plots)."""
    from pipeline.export import export_stage
    from schemas import arrow_schema

    run.write_bytes_rel("plan/plan.json", json.dumps({"num_shards": 2}).encode())
    write_manifest(run, ["ingest", "prefilter"])
    seals = {"ingest": run.seals("ingest"), "prefilter": run.seals("prefilter")}
    export_stage(run, "Out", "ingest", arrow_schema(SourceDialogue), "fp-ingest", 2, seals)
    assert verify(run) == []
    return run


OUT = "datasets/Out"


def _alter(rel: str, edit):
    def corrupt(root: Path) -> None:
        path = root / rel
        path.write_bytes(edit(path.read_bytes()))
    corrupt.__name__ = f"{edit.__name__}:{rel}"
    return corrupt


def flipped(data: bytes) -> bytes:
    return data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1 :]


def truncated(data: bytes) -> bytes:
    return data[:-10]


def garbled(data: bytes) -> bytes:
    return b"{garbled"


def _delete(rel: str):
    def corrupt(root: Path) -> None:
        (root / rel).unlink()
    corrupt.__name__ = f"deleted:{rel}"
    return corrupt


def _add(rel: str):
    def corrupt(root: Path) -> None:
        (root / rel).write_bytes(b"not ours")
    corrupt.__name__ = f"added:{rel}"
    return corrupt


def _edit_manifest(name: str, edit):
    """A plausible edit: the manifest rewritten as valid Parquet with its own schema."""
    def corrupt(root: Path) -> None:
        path = root / "manifest.parquet"
        rows = edit(pq.read_table(path).to_pylist())
        pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), path)
    corrupt.__name__ = f"manifest:{name}"
    return corrupt


def _more_rows(rows: list[dict]) -> list[dict]:
    return [{**rows[0], "rows_out": rows[0]["rows_out"] + 1}, *rows[1:]]


def _other_checksum(rows: list[dict]) -> list[dict]:
    return [*rows[:-1], {**rows[-1], "sha256": "0" * 64}]


def _invented_part(rows: list[dict]) -> list[dict]:
    return [*rows, {**rows[0], "part": 99}]


# (corruption, the path the problem names, a fragment of its description)
RUN_CORRUPTIONS = [
    (_edit_manifest("rows_out", _more_rows), "manifest.parquet", "rows_out differ from its commit marker"),
    (_edit_manifest("sha256", _other_checksum), "manifest.parquet", "sha256 differ from its commit marker"),
    (_edit_manifest("row_dropped", lambda rows: rows[1:]), "manifest.parquet", "not listed although older"),
    (_edit_manifest("row_twice", lambda rows: rows + rows[:1]), "manifest.parquet", "listed twice"),
    (_edit_manifest("invented_part", _invented_part), "manifest.parquet", "part 99 has no commit marker"),
    (_alter(f"{OUT}/data/train-00000-of-00002.parquet", flipped), f"{OUT}/data/train-00000-of-00002.parquet", "checksum"),
    (_alter(f"{OUT}/data/train-00001-of-00002.parquet", truncated), f"{OUT}/data/train-00001-of-00002.parquet", "marker says"),
    (_delete(f"{OUT}/data/train-00000-of-00002.parquet"), f"{OUT}/data/train-00000-of-00002.parquet", "missing"),
    (_alter(f"{OUT}/plots/turns.png", flipped), f"{OUT}/plots/turns.png", "checksum"),
    (_alter(f"{OUT}/README.md", flipped), f"{OUT}/README.md", "checksum"),
    (_delete(f"{OUT}/README.md"), f"{OUT}/README.md", "missing"),
    (_add(f"{OUT}/data/train-00002-of-00002.parquet"), f"{OUT}/data/train-00002-of-00002.parquet", "foreign file"),
    (_alter(f"{OUT}/_EXPORTED.json", garbled), f"{OUT}/_EXPORTED.json", "unreadable export marker"),
    (_delete(f"{OUT}/_EXPORTED.json"), f"{OUT}/data/train-00000-of-00002.parquet", "unfinished export"),
    (_alter("ingest/_STAGE.json", garbled), "ingest/_STAGE.json", "unreadable stage stamp"),
    (_alter("run.json", garbled), "run.json", "unreadable"),
    (_alter("plan/plan.json", truncated), "plan/plan.json", "unreadable"),
    (_alter("manifest.parquet", truncated), "manifest.parquet", "unreadable"),
]


@pytest.mark.parametrize("corrupt, path, what", RUN_CORRUPTIONS, ids=[c[0].__name__ for c in RUN_CORRUPTIONS])
def test_verify_detects_each_corruption_of_a_whole_run(exported, tmp_path, corrupt, path, what):
    corrupt(tmp_path / "run")
    problems = verify(exported)
    assert any(p.path == path and what in p.what for p in problems), [str(p) for p in problems]


def test_verify_reads_past_an_unreadable_stamp(exported, tmp_path):
    """The stage's markers still account for its files: only the stamp is reported."""
    _alter("ingest/_STAGE.json", garbled)(tmp_path / "run")
    assert [p.path for p in verify(exported)] == ["ingest/_STAGE.json"]


def test_verify_names_every_file_of_an_unfinished_export_and_nothing_else(exported, tmp_path):
    _delete(f"{OUT}/_EXPORTED.json")(tmp_path / "run")
    problems = verify(exported)
    assert {p.path for p in problems} == {str(p.relative_to(tmp_path / "run")) for p in (tmp_path / "run" / OUT).rglob("*")
                                          if p.is_file()}
    assert all("unfinished export" in p.what for p in problems)


# -- manifest -------------------------------------------------------------------------------

def test_write_manifest_has_one_row_per_commit(run, tmp_path):
    table = write_manifest(run, ["ingest", "prefilter"])
    assert table.num_rows == len(run.commits("ingest")) + len(run.commits("prefilter")) == 4
    assert table.schema == MANIFEST_SCHEMA
    on_disk = pq.read_table(tmp_path / "run" / MANIFEST)
    assert on_disk.column_names == MANIFEST_SCHEMA.names
    assert on_disk.to_pylist() == table.to_pylist()
    rows = {(r["stage"], r["shard"], r["part"]): r for r in table.to_pylist()}
    assert set(rows) == {("ingest", 0, 0), ("ingest", 0, 1), ("ingest", 1, 0), ("prefilter", 0, 0)}
    assert rows[("ingest", 0, 1)]["rows_rejected"] == 2
    assert rows[("ingest", 0, 1)]["rejected_path"] == "ingest/rejected/shard-00000/part-00001.parquet"
    assert rows[("ingest", 0, 0)]["rejected_path"] is None
    assert rows[("ingest", 1, 0)]["sealed"] and not rows[("prefilter", 0, 0)]["sealed"]
    assert sum(r["rows_out"] for r in rows.values()) == 3 + 2 + 4 + 2
    commit_ = run.commits("ingest")[(0, 0)]
    assert rows[("ingest", 0, 0)]["sha256"] == commit_.output.sha256
    assert rows[("ingest", 0, 0)]["bytes"] == commit_.output.bytes


def test_manifest_ignores_uncommitted_parts(run, tmp_path):
    uncommitted_part(tmp_path / "run")
    assert write_manifest(run, ["ingest"]).num_rows == 3


def test_manifest_of_an_empty_run(rundir):
    table = write_manifest(rundir, ["ingest"])
    assert table.num_rows == 0 and table.schema == MANIFEST_SCHEMA


def test_a_manifest_written_before_later_commits_is_not_a_problem(exported, tmp_path):
    """A run stopped before its end writes no new manifest: parts committed after the last
    one was written are simply not in it yet."""
    def drop_newest(rows: list[dict]) -> list[dict]:
        newest = max(rows, key=lambda row: row["committed_at"])
        return [row for row in rows if row is not newest]

    _edit_manifest("stale", drop_newest)(tmp_path / "run")
    assert verify(exported) == []
