"""Stage kinds by name, as configs refer to them."""

from __future__ import annotations

from typing import Any

from actors.base import Stage
from actors.demographics import DemographicsStage
from actors.llm_filter import LLMFilterStage
from actors.prefilter import Prefilter
from actors.normalize import NormalizeStage
from actors.rewrite import RewriteStage
from actors.simulate import SimulatedEngineStage
from actors.synthesize import SynthesizeStage
from actors.voice_match import VoiceMatchStage

STAGE_KINDS: dict[str, type[Stage]] = {
    cls.kind: cls for cls in (Prefilter, NormalizeStage, SimulatedEngineStage, LLMFilterStage, RewriteStage, DemographicsStage,
                         VoiceMatchStage, SynthesizeStage)
}


def stage_class(kind: str) -> type[Stage]:
    try:
        return STAGE_KINDS[kind]
    except KeyError:
        raise KeyError(f"unknown stage kind {kind!r}; known kinds: {', '.join(sorted(STAGE_KINDS))}") from None


def build_stage(kind: str, name: str, params: dict[str, Any], run_seed: int) -> Stage:
    cls = stage_class(kind)
    return cls(name, cls.Params.model_validate(params), run_seed)
