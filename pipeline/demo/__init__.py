"""The bundled demo: the sample consultations (demo.yaml) through every stage.

The LLM stages load the checkpoint `demo_config` is given: by default the tiny random
model, made once into the user's cache (`demo_model`), so the demo runs anywhere without
downloads; its answers are schema-valid and meaningless. The voice pool and cough clips
are made into the cache too (`pipeline.demo.voices`).
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

import yaml

from pipeline.config import PipelineConfig, parse_config

CONFIG = files("pipeline") / "demo" / "demo.yaml"


def demo_model() -> Path:
    """The tiny random model in the user's cache, made on first use."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "speechmed" / "tiny-qwen2"
    if not (cache / "model.safetensors").exists():
        from pipeline.tinymodel import make_tiny_model

        partial = cache.with_name(f"{cache.name}.partial-{os.getpid()}")
        make_tiny_model(partial)
        partial.replace(cache)  # whole or not at all, should two demos start at once
    return cache


def demo_config(checkpoint: Path, pool: Path, coughs: Path) -> PipelineConfig:
    """demo.yaml with every LLM stage on `checkpoint`, voices from `pool`, coughs from `coughs`."""
    raw = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    for stage in raw["stages"]:
        params = stage.get("params", {})
        if stage["kind"] in ("llm_filter", "rewrite", "demographics"):
            params["engine"]["model"] = str(checkpoint)
        if stage["kind"] == "voice_match":
            params["pool"] = str(pool)
        if stage["kind"] == "synthesize":
            params["cough_dir"] = str(coughs)
    return parse_config(raw, base_dir=str(CONFIG.parent), origin=str(CONFIG))
