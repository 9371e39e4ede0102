"""The pipeline on a real Ray cluster: end to end, reconciliation, fingerprints, faults
inside a run (an actor killed mid-shard, bad rows, a hang, an engine that cannot load)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.config import parse_config
from pipeline.driver import execute
from pipeline.plan import INGEST
from pipeline.scheduler import EngineLoadError, PipelineError
from pipeline.status import run_status
from storage.rundir import RunDir
from storage.verify import verify
from tests.conftest import committed_ids, REPO, pipeline_config, write_dialogues

pytestmark = pytest.mark.usefixtures("ray_connected")


def _stage(name: str, kind: str, batch: int = 8, actors: int = 2, **params: object) -> dict:
    return {"name": name, "kind": kind, "params": params, "micro_batch_size": batch,
            "resources": {"actors": actors, "num_cpus": 0.25, "batch_timeout_s": 60}}


def _run(cfg: dict, run: Path, **kwargs: object):
    return execute(parse_config(cfg, base_dir=None, origin="test"), str(run), command="pytest", **kwargs)


def _sessions(run: Path, stage: str) -> set[str]:
    return {c.session for c in RunDir(str(run)).commits(stage).values()}


def test_changing_a_stage_reruns_it_and_later_stages_only(tmp_path: Path) -> None:
    source = write_dialogues(tmp_path / "in.json", 40, bad_every=5)
    stages = [_stage("prefilter", "prefilter"), _stage("sim", "simulate"), _stage("normalize", "normalize")]
    run = tmp_path / "run"
    _run(pipeline_config(source, stages=stages), run)
    before = {s: _sessions(run, s) for s in (INGEST, "prefilter", "sim", "normalize")}

    stages[1] = _stage("sim", "simulate", latency_per_item_s=0.001)
    result = _run(pipeline_config(source, stages=stages), run)
    assert result.invalidated == ["sim", "normalize"]
    after = {s: _sessions(run, s) for s in before}
    assert after[INGEST] == before[INGEST] and after["prefilter"] == before["prefilter"]
    assert after["sim"] == after["normalize"] == {result.session}

    # Resources do not change output: no re-run. And a sealed stage starts no actor: asking
    # for a GPU this cluster does not have would otherwise leave the run waiting forever.
    stages[2]["resources"]["actors"] = 1
    stages[1]["resources"]["num_gpus"] = 1
    before = _stage_actors()
    result = _run(pipeline_config(source, stages=stages), run)
    assert result.invalidated == [] and result.rows_processed == {"prefilter": 0, "sim": 0, "normalize": 0}
    assert _stage_actors() == before
    assert verify(RunDir(str(run))) == []


def _stage_actors() -> set[str]:
    # From the GCS table the driver is connected to (the state API needs a dashboard).
    from ray._private.state import actors

    return {actor_id for actor_id, info in actors().items() if info["ActorClassName"] == "PartRunner"}


def test_actor_killed_mid_shard_completes_without_duplicates(tmp_path: Path) -> None:
    source = write_dialogues(tmp_path / "in.json", 48)
    stages = [_stage("sim", "simulate", batch=4, actors=1, latency_base_s=0.25)]
    run = tmp_path / "run"
    outcome: dict = {}
    driver = threading.Thread(target=lambda: outcome.update(result=_run(pipeline_config(source, stages=stages, num_shards=2), run)))
    driver.start()
    rundir = RunDir(str(run))
    deadline = time.monotonic() + 60
    while not rundir.commits("sim") and time.monotonic() < deadline:
        time.sleep(0.05)
    live = run_status(rundir)
    assert live.running and "pytest" in (live.holder or "")
    assert 0 < next(s for s in live.stages if s.name == "sim").rows_in < 48
    victim = int(next(iter(rundir.commits("sim").values())).worker.rsplit(":", 1)[1])
    os.kill(victim, signal.SIGKILL)
    driver.join(timeout=120)
    assert "result" in outcome, "the run did not finish after its actor was killed"

    ids = committed_ids(run, "sim")
    assert Counter(ids).most_common(1)[0][1] == 1
    assert sorted(ids) == sorted(committed_ids(run, INGEST))
    workers = {c.worker for c in rundir.commits("sim").values()}
    assert len(workers) >= 2, "the actor should have been restarted in a new process"
    assert verify(rundir) == []


def test_bad_rows_are_rejected_with_reason_not_the_shard(tmp_path: Path) -> None:
    source = write_dialogues(tmp_path / "in.json", 24)
    run = tmp_path / "run"
    _run(pipeline_config(source, stages=[]), run)  # ingest alone, to learn the real ids
    ids = sorted(committed_ids(run, INGEST))
    bad = ids[3], ids[11]
    stages = [_stage("sim", "simulate", batch=8, fail_ids=list(bad))]
    _run(pipeline_config(source, stages=stages), run)
    rejected = RunDir(str(run)).read_rejected("sim").to_pylist()
    assert sorted(r["id"] for r in rejected) == sorted(bad)
    assert all(r["reason"] == "simulate.error" and "simulated engine error" in r["detail"] for r in rejected)
    assert sorted(committed_ids(run, "sim")) == sorted(set(ids) - set(bad))


def test_engine_that_cannot_load_stops_the_run_fast(tmp_path: Path) -> None:
    source = write_dialogues(tmp_path / "in.json", 8)
    stages = [_stage("sim", "simulate", load_error="no checkpoint at /models/qwen2.5-14b")]
    started = time.monotonic()
    with pytest.raises(EngineLoadError, match="no checkpoint at /models/qwen2.5-14b"):
        _run(pipeline_config(source, stages=stages), tmp_path / "run")
    assert time.monotonic() - started < 30


def test_hung_micro_batch_times_out_and_is_retried(tmp_path: Path) -> None:
    source = write_dialogues(tmp_path / "in.json", 8)
    run = tmp_path / "run"
    _run(pipeline_config(source, stages=[], num_shards=1), run)
    hung = sorted(committed_ids(run, INGEST))[0]
    stage = _stage("sim", "simulate", batch=4, actors=1, hang_ids=[hung])
    stage["resources"].update(batch_timeout_s=2, max_part_attempts=2)
    with pytest.raises(PipelineError, match="timed out after 2s"):
        _run(pipeline_config(source, stages=[stage], num_shards=1), run)
    # The other micro-batch was committed; only the hung one is missing.
    assert len(RunDir(str(run)).commits("sim")) == 1


def test_resume_cleans_uncommitted_leftovers_and_redoes_the_part(tmp_path: Path) -> None:
    source = write_dialogues(tmp_path / "in.json", 32)
    stages = [_stage("prefilter", "prefilter"), _stage("normalize", "normalize")]
    run = tmp_path / "run"
    cfg = pipeline_config(source, stages=stages, num_shards=2)
    _run(cfg, run)
    expected = sorted(committed_ids(run, "normalize"))
    rundir = RunDir(str(run))
    shard_dir = run / "normalize" / "shard-00000"
    (shard_dir / "part-00000.commit.json").unlink()  # as if killed before the marker
    (shard_dir / "_SEALED").unlink()
    (shard_dir / ".tmp-0123abcd-part-00001.parquet").write_bytes(b"partial")
    (shard_dir / "part-00099.parquet").write_bytes(b"orphan")
    assert {p.what.split(" ")[0] for p in verify(rundir)} >= {"uncommitted"}

    result = _run(cfg, run)
    assert result.cleaned == 3  # the orphaned part 0, the temp file, part 99
    assert result.rows_processed["normalize"] == 8  # exactly the one uncommitted micro-batch
    assert sorted(committed_ids(run, "normalize")) == expected
    assert verify(rundir) == []


def test_cli_demo_end_to_end_then_status_manifest_verify(tmp_path: Path, ray_address: str) -> None:
    """The README's main command as a user runs it (the tiny model made into an empty
    cache), what it produced, then the inspection commands."""
    import json
    import os
    import subprocess

    from datasets import load_dataset
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.driver import load_run_config

    run = tmp_path / "demo"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run(["speechmed", "demo", "--run", str(run), "--address", ray_address, "--json"],
                          capture_output=True, text=True, timeout=400, env=env)
    assert done.returncode == 0, done.stderr
    assert "tiny random model" in done.stderr and "meaningless" in done.stderr
    assert (tmp_path / "cache" / "speechmed" / "tiny-qwen2" / "model.safetensors").exists()
    exported = json.loads(done.stdout)["exports"]["TextMedDataset"]

    rundir = RunDir(str(run))
    status = {s.name: s for s in run_status(rundir).stages}
    assert status["ingest"].rows_in == 60
    assert status["ingest"].rejected_by_reason == {"ingest.duplicate_content": 2}
    assert status["prefilter"].rejected_by_reason == {
        "prefilter.too_short": 5, "prefilter.voice_impossible": 6, "prefilter.not_chinese": 2}
    names = ["ingest", "prefilter", "filter", "rewrite", "normalize", "demographics", "voice", "speak"]
    assert list(status) == names
    for upstream, name in zip(names[:-1], names[1:-1]):
        assert status[name].rows_in == status[upstream].rows_out
    for name in names[:-1]:
        assert status[name].rows_in == status[name].rows_out + status[name].rows_rejected
    # synthesize fans out: dialogues in = dialogues spoken + dialogues rejected.
    speak = status["speak"]
    assert speak.rows_in == status["voice"].rows_out > 0

    dataset = load_dataset(str(run / "datasets" / "TextMedDataset"))["train"]
    assert len(dataset) == exported == status["demographics"].rows_out
    assert len(set(dataset["id"])) == len(dataset)
    spoken = [t["speech_text"] for row in dataset["turns"] for t in row]
    assert all(spoken) and not any(ch.isdigit() for text in spoken for ch in text if ch.isascii())
    speech = load_dataset(str(run / "datasets" / "SpeechMedDataset"))["train"]
    assert len(speech) == json.loads(done.stdout)["exports"]["SpeechMedDataset"] == speak.rows_out > 0
    assert len(set(speech["dialogue_id"])) + speak.rows_rejected == speak.rows_in
    assert set(speech["role"]) == {"patient", "doctor"} and set(speech["engine"]) == {"espeak"}
    assert {v["match"] for v in speech["voice"]} <= {"gender_age", "gender", "age_group", "none"}
    sharegpt = (run / "datasets" / "SpeechMedDataset" / "sharegpt" / "train.jsonl").read_text(encoding="utf-8")
    assert len(sharegpt.splitlines()) == len(set(speech["dialogue_id"]))
    assert (tmp_path / "cache" / "speechmed" / "demo-voices-v1" / "pool" / "pool.json").exists()
    assert verify(rundir) == []

    again = execute(load_run_config(rundir), str(run), command="pytest")
    assert again.rows_processed == {name: 0 for name in names[1:]}

    cli = CliRunner()
    state = json.loads(cli.invoke(app, ["status", str(run), "--json"]).output)
    assert not state["running"] and state["eta_s"] is None
    assert [s["shards_sealed"] for s in state["stages"]] == [4] * len(names)

    manifest = cli.invoke(app, ["manifest", str(run), "--json"])
    assert manifest.exit_code == 0
    parts = pq.read_table(run / "manifest.parquet")
    assert parts.num_rows == json.loads(manifest.output)["parts"] == sum(len(rundir.commits(s)) for s in names)

    assert cli.invoke(app, ["verify", str(run)]).exit_code == 0
    victim = next((run / "prefilter" / "shard-00001").glob("part-*.parquet"))
    victim.write_bytes(victim.read_bytes()[:-10])
    failed = cli.invoke(app, ["verify", str(run), "--json"])
    assert failed.exit_code == 1
    assert any("part-" in p and "size" in p for p in json.loads(failed.output)["problems"])


def test_stages_stream_and_shards_in_flight_are_bounded(tmp_path: Path) -> None:
    source = write_dialogues(tmp_path / "in.json", 96)
    upstream = _stage("sim", "simulate", batch=8, actors=2, latency_base_s=0.05)
    upstream["resources"]["max_shards_in_flight"] = 1
    stages = [upstream, _stage("normalize", "normalize", batch=8)]
    run = tmp_path / "run"
    _run(pipeline_config(source, stages=stages, num_shards=6), run)
    rundir = RunDir(str(run))

    # Streaming: the downstream stage committed work before the upstream stage finished.
    sim_seals = rundir.seals("sim")
    first_downstream = min(c.committed_at for c in rundir.commits("normalize").values())
    assert first_downstream < max(s.sealed_at for s in sim_seals.values())

    # Backpressure: with one shard in flight, shards of `sim` are processed one after another.
    spans = {}
    for (shard, _), c in rundir.commits("sim").items():
        lo, hi = spans.get(shard, (float("inf"), 0.0))
        spans[shard] = (min(lo, c.committed_at - c.elapsed_s), max(hi, c.committed_at))
    ordered = sorted(spans.values())
    assert all(prev[1] <= nxt[0] + 0.01 for prev, nxt in zip(ordered, ordered[1:]))


FIXTURES = REPO / "tests" / "fixtures" / "sources"
ALL_SOURCES = [
    {"name": "cmb", "format": "cmb_exam", "path": str(FIXTURES / "cmb" / "CMB-Exam" / "CMB-train" / "CMB-train-merge.json")},
    {"name": "cmexam", "format": "cmexam", "path": str(FIXTURES / "cmexam" / "data")},
    {"name": "encyclopedia", "format": "huatuo_pretrain", "path": str(FIXTURES / "huatuo" / "HuatuoGPT2-Pretraining-Instruction"),
     "options": {"corpora": ["Encyclopedia", "Books"]}},
    {"name": "huatuo_sft", "format": "huatuo_sft", "path": str(FIXTURES / "huatuo" / "HuatuoGPT2-SFT-GPT4-140K"), "sample_ratio": 0.9},
    {"name": "cmtmedqa", "format": "cmtmedqa", "path": str(FIXTURES / "cmtmedqa" / "CMtMedQA.json")},
    {"name": "meddg", "format": "meddg", "path": str(FIXTURES / "meddg")},
    {"name": "safety", "format": "medsafety", "path": str(FIXTURES / "medsafety" / "datasets")},
    {"name": "cough", "format": "meddialog", "path": str(FIXTURES / "meddialog" / "2020.txt")},
]


def test_every_source_format_through_the_pipeline_reconciles(tmp_path: Path) -> None:
    import json

    stages = [_stage("prefilter", "prefilter"), _stage("normalize", "normalize")]
    cfg = {"seed": 11, "num_shards": 3, "ingest_part_size": 16, "sources": ALL_SOURCES, "stages": stages,
           "exports": [{"name": "All", "stage": "normalize"}]}
    run = tmp_path / "run"
    result = _run(cfg, run)
    plan = json.loads((run / "plan" / "plan.json").read_text())["sources"]
    assert set(plan) == {s["name"] for s in ALL_SOURCES}
    for name, counts in plan.items():
        assert counts["written"] > 0, name
        assert counts["read"] == sum(counts.get(k, 0) for k in ("sampled_out", "written", "rejected", "duplicates")), name
    status = {s.name: s for s in run_status(RunDir(str(run))).stages}
    assert status["ingest"].rows_out == sum(c["written"] for c in plan.values())
    for name in ("prefilter", "normalize"):
        assert status[name].rows_in == status[name].rows_out + status[name].rows_rejected
    # English safety demonstrations are translated later: the prefilter must keep them.
    treatments = Counter(t for t in pq.read_table(run / "datasets" / "All" / "data").column("treatment").to_pylist())
    assert treatments["safety"] > 0 and set(treatments) == {
        "knowledge_qa", "encyclopedia", "single_turn_qa", "consultation", "safety", "cough"}
    assert result.exports["All"] == sum(treatments.values())
    assert verify(RunDir(str(run))) == []


def test_resume_removes_temp_files_a_killed_driver_left_anywhere(tmp_path: Path) -> None:
    source = write_dialogues(tmp_path / "in.json", 8)
    run = tmp_path / "run"
    cfg = pipeline_config(source, stages=[_stage("normalize", "normalize")], num_shards=1,
                          exports=[{"name": "Out", "stage": "normalize"}])
    _run(cfg, run)
    # As if killed while replacing run.json, or while writing an export file.
    (run / ".tmp-0123abcd-run.json").write_text("{")
    (run / "datasets" / "Out" / ".tmp-4567cdef-README.md").write_text("half")
    assert len(verify(RunDir(str(run)))) == 2
    assert _run(cfg, run).cleaned == 2
    assert verify(RunDir(str(run))) == []


def test_export_with_empty_shards_loads(tmp_path: Path) -> None:
    """Shards with no rows get no file (`datasets` cannot read an empty Parquet file)."""
    from datasets import load_dataset

    source = write_dialogues(tmp_path / "in.json", 3)
    cfg = pipeline_config(source, stages=[_stage("normalize", "normalize", actors=1)], num_shards=8,
                          exports=[{"name": "Few", "stage": "normalize"}])
    run = tmp_path / "run"
    result = _run(cfg, run)
    files = sorted(p.name for p in (run / "datasets" / "Few" / "data").iterdir())
    nonempty = sum(1 for s in RunDir(str(run)).seals("normalize").values() if s.rows_out)
    assert len(files) == nonempty < 8 and files[-1].endswith(f"-of-{nonempty:05d}.parquet")
    dataset = load_dataset(str(run / "datasets" / "Few"), split="train")
    assert len(dataset) == result.exports["Few"] == 3
    assert verify(RunDir(str(run))) == []
