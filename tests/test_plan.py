"""The input plan without Ray: sampling by id, per-source limits, content dedup across
sources, repeated ids, and counts that reconcile per source."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.config import parse_config
from pipeline.plan import INGEST, plan_ingest
from storage.rundir import RunDir


def _record(i: int, text: str | None = None) -> dict:
    return {"id": f"r{i}", "conversations": [
        {"from": "human", "value": text or f"医生，我是第{i}位，最近总是失眠。"},
        {"from": "gpt", "value": "睡前少看手机，必要时去睡眠门诊。"}]}


def _write(path: Path, records: list[dict]) -> str:
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return str(path)


def _plan(tmp: Path, name: str, sources: list[dict], seed: int = 3, shards: int = 4) -> tuple[RunDir, dict]:
    config = parse_config({"seed": seed, "num_shards": shards, "ingest_part_size": 16, "sources": sources},
                          base_dir=None, origin="test")
    rundir = RunDir(str(tmp / name))
    plan_ingest(rundir.uri, config, "fp", "session", None)
    return rundir, json.loads((tmp / name / "plan" / "plan.json").read_text())


def _rows(rundir: RunDir, rejected: bool = False) -> list[dict]:
    rows = []
    for commit in rundir.commits(INGEST).values():
        entry = commit.rejected if rejected else commit.output
        if entry is not None:
            rows += pq.read_table(rundir.abs(entry.path)).to_pylist()
    return rows


def _reconciles(counts: dict) -> bool:
    parts = sum(counts.get(k, 0) for k in ("sampled_out", "written", "rejected", "duplicates"))
    return counts["read"] == parts


def test_sampling_is_reproducible_by_id_and_independent_of_file_order(tmp_path: Path) -> None:
    records = [_record(i) for i in range(400)]
    shuffled = random.Random(5).sample(records, len(records))
    src = lambda path: [{"name": "s", "format": "sharegpt", "path": path, "sample_ratio": 0.25}]  # noqa: E731
    a, counts = _plan(tmp_path, "a", src(_write(tmp_path / "a.json", records)))
    b, _ = _plan(tmp_path, "b", src(_write(tmp_path / "b.json", shuffled)))
    again, _ = _plan(tmp_path, "again", src(str(tmp_path / "a.json")))
    ids = sorted(r["id"] for r in _rows(a))
    assert ids == sorted(r["id"] for r in _rows(b)) == sorted(r["id"] for r in _rows(again))
    assert 60 < len(ids) < 140  # about a quarter of 400
    assert counts["sources"]["s"]["written"] == len(ids) and _reconciles(counts["sources"]["s"])
    # Each shard holds the same rows in the same order, whatever the file order was.
    for shard in range(4):
        assert a.read_output(INGEST, shard, a.seals(INGEST)[shard].parts).to_pylist() == \
            b.read_output(INGEST, shard, b.seals(INGEST)[shard].parts).to_pylist()
    other, _ = _plan(tmp_path, "other", src(str(tmp_path / "a.json")), seed=4)
    assert sorted(r["id"] for r in _rows(other)) != ids


def test_limit_keeps_the_lowest_sampling_points_whatever_the_order(tmp_path: Path) -> None:
    records = [_record(i) for i in range(200)]
    src = lambda path: [{"name": "s", "format": "sharegpt", "path": path, "limit": 30}]  # noqa: E731
    a, counts = _plan(tmp_path, "a", src(_write(tmp_path / "a.json", records)))
    b, _ = _plan(tmp_path, "b", src(_write(tmp_path / "b.json", records[::-1])))
    assert len(_rows(a)) == 30 and sorted(r["id"] for r in _rows(a)) == sorted(r["id"] for r in _rows(b))
    assert counts["sources"]["s"] == {"read": 200, "written": 30, "sampled_out": 170}


def test_content_duplicates_across_sources_are_recorded_not_lost(tmp_path: Path) -> None:
    same = "医生，我孩子发烧三十九度，还咳嗽，要去医院吗？"
    first = _write(tmp_path / "one.json", [_record(1, same), _record(2)])
    # Same content with other spacing and punctuation, in another source.
    second = _write(tmp_path / "two.json", [_record(7, same.replace("，", ", ") + " "), _record(8)])
    rundir, counts = _plan(tmp_path, "run", [
        {"name": "one", "format": "sharegpt", "path": first},
        {"name": "two", "format": "sharegpt", "path": second}])
    kept = {r["id"] for r in _rows(rundir)}
    (duplicate,) = [r for r in _rows(rundir, rejected=True)]
    assert duplicate["reason"] == "ingest.duplicate_content"
    assert duplicate["detail"].removeprefix("same content as ") in kept
    assert len(kept) == 3
    sources = counts["sources"]
    assert sum(c.get("duplicates", 0) for c in sources.values()) == 1
    assert all(_reconciles(c) for c in sources.values())


def test_repeated_ids_and_broken_records_are_rejected_never_sampled_out(tmp_path: Path) -> None:
    records = [_record(1), _record(1, "医生，同一个编号的另一段对话，内容不同。"), {"id": "bad", "conversations": []}]
    records += [_record(i) for i in range(2, 60)]
    rundir, counts = _plan(tmp_path, "run", [{"name": "s", "format": "sharegpt",
                                              "path": _write(tmp_path / "in.json", records), "sample_ratio": 0.01}])
    reasons = sorted(r["reason"] for r in _rows(rundir, rejected=True))
    assert "ingest.malformed" in reasons  # a broken input is always shown, whatever the ratio
    assert _reconciles(counts["sources"]["s"])
    full, _ = _plan(tmp_path, "full", [{"name": "s", "format": "sharegpt", "path": str(tmp_path / "in.json")}])
    assert sorted(r["reason"] for r in _rows(full, rejected=True)) == ["ingest.duplicate_id", "ingest.malformed"]


def test_rerunning_a_finished_plan_reads_nothing(tmp_path: Path) -> None:
    path = _write(tmp_path / "in.json", [_record(i) for i in range(20)])
    sources = [{"name": "s", "format": "sharegpt", "path": path}]
    rundir, _ = _plan(tmp_path, "run", sources)
    before = {k: c.committed_at for k, c in rundir.commits(INGEST).items()}
    Path(path).unlink()  # a finished plan must not need its sources again
    config = parse_config({"num_shards": 4, "ingest_part_size": 16, "seed": 3,
                           "sources": [{"name": "s", "format": "sharegpt", "path": str(tmp_path)}]},
                          base_dir=None, origin="test")
    plan_ingest(rundir.uri, config, "fp", "session", None)
    assert {k: c.committed_at for k, c in rundir.commits(INGEST).items()} == before
