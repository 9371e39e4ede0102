"""The shipped configs (configs/*.yaml) are valid: with each source path pointed at the
matching test fixture, they parse, every LLM stage names a Qwen2.5 checkpoint, and every
tensor-parallel engine has the GPUs it needs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import parse_config
from tests.conftest import REPO

FIXTURES = REPO / "tests" / "fixtures" / "sources"
FIXTURE_FOR_FORMAT = {
    "cmb_exam": FIXTURES / "cmb" / "CMB-Exam",
    "cmexam": FIXTURES / "cmexam" / "data",
    "huatuo_pretrain": FIXTURES / "huatuo" / "HuatuoGPT2-Pretraining-Instruction",
    "huatuo_sft": FIXTURES / "huatuo" / "HuatuoGPT2-SFT-GPT4-140K",
    "cmtmedqa": FIXTURES / "cmtmedqa",
    "meddg": FIXTURES / "meddg",
    "medsafety": FIXTURES / "medsafety" / "datasets",
    "meddialog": FIXTURES / "meddialog",
}
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_configs_ship() -> None:
    assert {p.name for p in CONFIGS} >= {"paper.yaml", "paper-32b.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_is_valid(path: Path) -> None:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    for source in raw["sources"]:
        source["path"] = str(FIXTURE_FOR_FORMAT[source["format"]])
    config = parse_config(raw, base_dir=str(path.parent), origin=str(path))
    models = set()
    for stage in config.stages:
        if stage.kind not in ("llm_filter", "rewrite", "demographics"):
            continue
        engine = stage.params["engine"]
        models.add(Path(engine["model"]).name)
        assert stage.resources.num_gpus == engine.get("tensor_parallel_size", 1), stage.name
    assert models <= {"Qwen2.5-14B-Instruct", "Qwen2.5-32B-Instruct", "Qwen2.5-72B-Instruct"} and models
    speak = next(s for s in config.stages if s.kind == "synthesize")
    assert speak.params["engine"]["kind"] == "cosyvoice2" and speak.params["random_timbre_engine"]["kind"] == "fishspeech"
    assert speak.params["doctor_units"] and 0 < speak.resources.num_gpus < 1
    assert [(e.name, e.stage) for e in config.exports] == [("TextMedDataset", "demographics"), ("SpeechMedDataset", "speak")]


def test_tensor_parallel_engine_needs_its_gpus() -> None:
    from pipeline.config import ConfigError

    raw = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text(encoding="utf-8"))
    for source in raw["sources"]:
        source["path"] = str(FIXTURE_FOR_FORMAT[source["format"]])
    rewrite = next(s for s in raw["stages"] if s["kind"] == "rewrite")
    rewrite["resources"]["num_gpus"] = 2  # its engine has tensor_parallel_size 4
    with pytest.raises(ConfigError, match=r"stages\[2\]: resources.num_gpus: each rewrite actor needs num_gpus: 4"):
        parse_config(raw, base_dir=None, origin="paper.yaml")
