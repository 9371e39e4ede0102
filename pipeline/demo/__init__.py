"""The bundled demo: the sample consultations (demo.yaml) through every text stage.

The LLM stages load the checkpoint `demo_config` is given: by default the tiny random
model, made once into the user's cache (`demo_model`), so the demo runs anywhere without
downloads; its answers are schema-valid and meaningless.
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


def demo_config(checkpoint: Path) -> PipelineConfig:
    """demo.yaml with every LLM stage on `checkpoint`."""
    raw = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    for stage in raw["stages"]:
        if "engine" in stage.get("params", {}):
            stage["params"]["engine"]["model"] = str(checkpoint)
    return parse_config(raw, base_dir=str(CONFIG.parent), origin=str(CONFIG))
