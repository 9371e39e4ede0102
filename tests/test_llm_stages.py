"""The text stages end to end (llm_filter → rewrite → normalize → demographics → export)
with the real vLLM engine (CPU build) on the tiny random model, in Ray actors, over every
source treatment. The model's answers are meaningless; what is tested is what the
pipeline guarantees about them: every accepted rewrite satisfies the structural rules,
every rejection keeps the raw output and a reason, counts reconcile, and the exported
TextMedDataset loads with its card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from actors.rewrite_rules import RewriteRules, check_rewrite
from pipeline.config import parse_config
from pipeline.driver import execute
from pipeline.status import run_status
from prompts import load_prompt
from schemas import SourceDialogue, age_group_of, from_table
from schemas.llm import RewriteAnswer, Round
from storage.rundir import RunDir
from storage.verify import verify
from tests.conftest import REPO, committed_ids

pytestmark = pytest.mark.usefixtures("ray_connected")
FIXTURES = REPO / "tests" / "fixtures" / "sources"

SOURCES = [
    {"name": "sample", "format": "sharegpt", "path": str(REPO / "pipeline" / "demo" / "sample_consultations.json"), "limit": 6},
    {"name": "sft", "format": "huatuo_sft", "path": str(FIXTURES / "huatuo" / "HuatuoGPT2-SFT-GPT4-140K")},
    {"name": "encyclopedia", "format": "huatuo_pretrain", "path": str(FIXTURES / "huatuo" / "HuatuoGPT2-Pretraining-Instruction")},
    {"name": "safety", "format": "medsafety", "path": str(FIXTURES / "medsafety")},
    {"name": "cmb", "format": "cmb_exam", "path": str(FIXTURES / "cmb" / "CMB-Exam" / "CMB-train" / "CMB-train-merge.json")},
    {"name": "meddg", "format": "meddg", "path": str(FIXTURES / "meddg" / "train.txt")},
    {"name": "cough", "format": "meddialog", "path": str(FIXTURES / "meddialog" / "2020.txt")},
]


def text_stages(engine: dict[str, Any], *, actors: int = 1) -> list[dict[str, Any]]:
    """The text stages as a config lists them, all LLM stages on `engine`."""
    res = {"actors": actors, "num_cpus": 0.25, "batch_timeout_s": 300, "parts_in_flight_per_actor": 3}
    return [
        {"name": "filter", "kind": "llm_filter", "micro_batch_size": 8, "resources": res,
         "params": {"engine": engine, "sampling": {"temperature": 1.0, "max_tokens": 64}, "max_attempts": 2}},
        {"name": "rewrite", "kind": "rewrite", "micro_batch_size": 8, "resources": res,
         "params": {"engine": engine, "sampling": {"temperature": 1.0, "max_tokens": 400}, "max_attempts": 2}},
        {"name": "normalize", "kind": "normalize", "micro_batch_size": 8, "resources": {"actors": 1, "num_cpus": 0.25}},
        {"name": "demographics", "kind": "demographics", "micro_batch_size": 8, "resources": res,
         "params": {"engine": engine, "sampling": {"temperature": 1.0, "max_tokens": 48}, "max_attempts": 2}},
    ]


def dialogues(rundir: RunDir, stage: str) -> dict[str, SourceDialogue]:
    out = {}
    for shard, seal in rundir.seals(stage).items():
        out.update({d.id: d for d in from_table(rundir.read_output(stage, shard, seal.parts), SourceDialogue)})
    return out


def as_answer(dialogue: SourceDialogue) -> RewriteAnswer:
    turns = dialogue.turns
    return RewriteAnswer(rounds=[Round(patient=p.text, doctor=d.text) for p, d in zip(turns[::2], turns[1::2])])


def check_text_run(run: Path) -> dict[str, int]:
    """Every guarantee of the text stages on a finished run; returns rewrite counts."""
    rundir = RunDir(str(run))
    status = {s.name: s for s in run_status(rundir).stages}
    for name in ("filter", "rewrite", "normalize", "demographics"):
        s = status[name]
        assert s.rows_in == s.rows_out + s.rows_rejected, name
    for a, b in (("ingest", "filter"), ("filter", "rewrite"), ("rewrite", "normalize"), ("normalize", "demographics")):
        assert status[a].rows_out == status[b].rows_in
    for name in ("filter", "rewrite", "normalize", "demographics"):
        ids = committed_ids(run, name)
        assert len(ids) == len(set(ids)), f"{name}: duplicate ids"

    ingest, filtered, rewritten = dialogues(rundir, "ingest"), dialogues(rundir, "filter"), dialogues(rundir, "rewrite")
    accepted = [d for d in rewritten.values() if d.rewrite_prompt]
    assert accepted, "the tiny model produced no valid rewrite at all; the structural checks would be vacuous"
    for d in accepted:
        prompt = load_prompt("rewrite", d.treatment)
        assert d.rewrite_prompt == prompt.fingerprint
        assert [t.role for t in d.turns] == ["patient", "doctor"] * (len(d.turns) // 2)
        assert check_rewrite(as_answer(d), RewriteRules.model_validate(prompt.rules)) == []
        assert d.source == ingest[d.id].source and d.source_key == ingest[d.id].source_key
    # Exam questions are neither judged nor rewritten.
    for d in filtered.values():
        if d.treatment == "knowledge_qa":
            assert rewritten[d.id] == d
    for stage in ("filter", "rewrite", "demographics"):
        table = rundir.read_rejected(stage)
        for row in table.to_pylist() if table is not None else []:
            assert row["raw_output"], f"{stage}: a rejection without the model's raw output: {row}"
            assert row["reason"].startswith(status[stage].name and f"{'llm_filter' if stage == 'filter' else stage}.")
            assert SourceDialogue.model_validate_json(row["record_json"]).id == row["id"]

    final = dialogues(rundir, "demographics")
    for d in final.values():
        assert all(t.speech_text for t in d.turns)
        if ingest[d.id].age is not None:  # MedDG states them: the source wins
            assert d.age_group == age_group_of(ingest[d.id].age) and d.gender == ingest[d.id].gender
            assert d.demographics_by == "source"
        elif d.treatment in ("consultation", "single_turn_qa", "cough"):
            assert d.demographics_by == "llm"
        else:
            assert d.demographics_by is None and (d.gender, d.age_group) == ("unknown", "unknown")
    assert verify(rundir) == []
    return {"accepted": len(accepted), "rows": len(rewritten)}


def test_text_stages_in_ray_actors(tmp_path: Path, tiny_model: Path) -> None:
    engine = {"model": str(tiny_model), "enforce_eager": True, "max_model_len": 4096}
    cfg = {"seed": 11, "num_shards": 2, "ingest_part_size": 16, "sources": SOURCES, "stages": text_stages(engine),
           "exports": [{"name": "TextMedDataset", "stage": "demographics"}]}
    run = tmp_path / "run"
    result = execute(parse_config(cfg, base_dir=None, origin="test"), str(run), command="pytest")
    counts = check_text_run(run)
    assert counts["accepted"] >= 3

    import datasets

    loaded = datasets.load_dataset(str(run / "datasets" / "TextMedDataset"), split="train")
    assert len(loaded) == result.exports["TextMedDataset"] == run_status(RunDir(str(run))).stages[-1].rows_out
    card = (run / "datasets" / "TextMedDataset" / "README.md").read_text()
    assert "| gender |" in card and "| age group |" in card and "rewrite." in card
    if any(t in loaded["treatment"] for t in ("consultation", "single_turn_qa", "cough")):
        assert "SpeechMedAssist paper" in card and "| 6.58 |" in card


def openai_engine(url: str, **kwargs: Any) -> dict[str, Any]:
    return {"kind": "openai", "model": "tiny", "base_url": url, "api_key_env": None, "max_concurrency": 8, **kwargs}


def test_text_stages_against_openai_server_with_429s(tmp_path: Path, proxy) -> None:
    """Every LLM stage through a real vLLM server; the endpoint answers 429 for a while
    (Retry-After: 1) and the run backs off, loses no row and crashes nothing."""
    proxy.throttle = 12
    cfg = {"seed": 11, "num_shards": 2, "ingest_part_size": 16, "sources": SOURCES,
           "stages": text_stages(openai_engine(proxy.url, max_retries=20))}
    run = tmp_path / "run"
    execute(parse_config(cfg, base_dir=None, origin="test"), str(run), command="pytest")
    assert proxy.served_429 == 12 and proxy.errors == []
    check_text_run(run)


def test_server_killed_mid_run_then_resume(tmp_path: Path, tiny_model: Path) -> None:
    """SIGKILL the vLLM server while the rewrite stage runs: the engine retries, then the
    run stops with the unanswered micro-batches uncommitted (not rejected); a new server
    comes up and `speechmed resume` finishes with every record exactly once."""
    import threading
    import time

    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.scheduler import PipelineError
    from tests.llm_servers import FaultProxy, vllm_server

    cfg = {"seed": 11, "num_shards": 2, "ingest_part_size": 16, "sources": SOURCES,
           "stages": text_stages(openai_engine("", max_retries=2))}
    with vllm_server(tiny_model, tmp_path / "server1.log") as first:
        proxy = FaultProxy(first.url)  # a stable URL for the run; the server behind it changes
        for stage in cfg["stages"]:
            if "engine" in stage.get("params", {}):
                stage["params"]["engine"]["base_url"] = proxy.url
            stage["resources"] = {**stage["resources"], "max_part_attempts": 2}
        run = tmp_path / "run"
        outcome: list[BaseException | None] = []

        def go() -> None:
            try:
                execute(parse_config(cfg, base_dir=None, origin="test"), str(run), command="pytest")
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                outcome.append(exc)

        driver = threading.Thread(target=go)
        driver.start()
        rundir = RunDir(str(run))
        deadline = time.monotonic() + 240
        while not (rundir.exists() and rundir.commits("rewrite")) and time.monotonic() < deadline and not outcome:
            time.sleep(0.2)
        assert rundir.commits("rewrite") and not outcome, "the rewrite stage should be running"
        first.kill()
        driver.join(timeout=300)
    assert outcome and isinstance(outcome[0], PipelineError), outcome
    assert "no answer after 2 retries" in str(outcome[0])
    for stage in ("filter", "rewrite", "demographics"):
        table = rundir.read_rejected(stage)
        reasons = set(table.column("reason").to_pylist()) if table is not None else set()
        assert not {r for r in reasons if r.endswith(".error")}, "a dead endpoint must not reject rows"

    with vllm_server(tiny_model, tmp_path / "server2.log") as second:
        proxy.upstream = second.url
        result = CliRunner().invoke(app, ["resume", str(run)])
    proxy.close()
    assert result.exit_code == 0, result.output
    check_text_run(run)


def test_missing_checkpoint_stops_the_run_fast(tmp_path: Path) -> None:
    import time

    from pipeline.scheduler import EngineLoadError

    engine = {"model": str(tmp_path / "no-such-checkpoint"), "enforce_eager": True}
    cfg = {"seed": 1, "num_shards": 1, "sources": SOURCES[:1], "stages": text_stages(engine)[1:2]}
    started = time.monotonic()
    with pytest.raises(EngineLoadError, match="no-such-checkpoint"):
        execute(parse_config(cfg, base_dir=None, origin="test"), str(tmp_path / "run"), command="pytest")
    assert time.monotonic() - started < 30
