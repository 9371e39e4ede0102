"""The LLM filter stage with the real vLLM engine (CPU build) on the tiny random model,
inside Ray actors: structured answers parse, every record is kept or rejected with the raw
output and a reason, and treatments the filter does not judge pass through."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import parse_config
from pipeline.driver import execute
from pipeline.status import run_status
from storage.rundir import RunDir
from storage.verify import verify
from tests.conftest import REPO, committed_ids

pytestmark = pytest.mark.usefixtures("ray_connected")
FIXTURES = REPO / "tests" / "fixtures" / "sources"


def test_llm_filter_on_vllm_in_ray_actors(tmp_path: Path, tiny_model: Path) -> None:
    cfg = {
        "seed": 5, "num_shards": 2, "ingest_part_size": 16,
        "sources": [
            {"name": "sample", "format": "sharegpt", "path": str(REPO / "pipeline" / "demo" / "sample_consultations.json"),
             "limit": 12},
            {"name": "cmb", "format": "cmb_exam", "path": str(FIXTURES / "cmb" / "CMB-Exam" / "CMB-train" / "CMB-train-merge.json")},
        ],
        "stages": [{
            "name": "filter", "kind": "llm_filter", "micro_batch_size": 8,
            "params": {"engine": {"model": str(tiny_model), "enforce_eager": True, "max_model_len": 4096},
                       "sampling": {"temperature": 1.0, "max_tokens": 64}, "max_attempts": 2},
            "resources": {"actors": 1, "num_cpus": 0.5, "batch_timeout_s": 240},
        }],
    }
    run = tmp_path / "run"
    execute(parse_config(cfg, base_dir=None, origin="test"), str(run), command="pytest")
    rundir = RunDir(str(run))
    status = {s.name: s for s in run_status(rundir).stages}
    assert status["filter"].rows_in == status["ingest"].rows_out >= 14  # 12 sampled + 4 exam items, less duplicates
    assert status["filter"].rows_in == status["filter"].rows_out + status["filter"].rows_rejected

    kept = set(committed_ids(run, "filter"))
    rejected = rundir.read_rejected("filter")
    rejected_rows = rejected.to_pylist() if rejected is not None else []
    # Exam questions are not judged: all 4 CMB items pass through.
    ingest = {r.id: r for r in _dialogues(rundir, "ingest")}
    assert {i for i, d in ingest.items() if d.source == "cmb"} <= kept
    for row in rejected_rows:
        assert row["reason"] in ("llm_filter.judged_out", "llm_filter.unparseable")
        assert row["raw_output"], "the model's raw answer is kept with every rejection"
        assert ingest[row["id"]].source == "sample"
    assert kept.isdisjoint(r["id"] for r in rejected_rows)
    assert verify(rundir) == []


def _dialogues(rundir: RunDir, stage: str):
    from schemas import SourceDialogue, from_table

    seals = rundir.seals(stage)
    out = []
    for shard, seal in seals.items():
        out += from_table(rundir.read_output(stage, shard, seal.parts), SourceDialogue)
    return out


def test_tiny_model_command(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from pipeline.cli import app

    result = CliRunner().invoke(app, ["tiny-model", str(tmp_path / "tiny")])
    assert result.exit_code == 0 and "meaningless" in result.output
    config = json.loads((tmp_path / "tiny" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["num_hidden_layers"] == 2
    assert (tmp_path / "tiny" / "model.safetensors").stat().st_size < 5_000_000
    assert "<|im_start|>" in (tmp_path / "tiny" / "chat_template.jinja").read_text()
