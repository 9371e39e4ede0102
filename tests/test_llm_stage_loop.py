"""The shared LLM-stage loop, driven by a scripted engine.

`ScriptedEngine` is a test double at the model boundary (it answers from a script instead
of sampling a model) so that each path of the loop can be forced: a broken answer retried
with a new seed, a rule broken on every attempt, a truncated answer, a valid "no". The
same stages run on the real vLLM engine in test_llm_stages.py."""

from __future__ import annotations

import json

from actors.engines.llm import EngineConfig, LLMEngine, LLMRequest, LLMResponse
from actors.llm_filter import LLMFilterStage
from actors.rewrite import RewriteStage
from actors.worker import check_reconciles
from schemas import SourceDialogue, Turn


class ScriptedEngine(LLMEngine):
    """Answers each request with the next scripted reply for its record (test double)."""

    def __init__(self, script: dict[str, list[LLMResponse]]):
        self.script = script
        self.seen: dict[str, list[int]] = {}

    def generate(self, requests: list[LLMRequest]) -> list[LLMResponse]:
        out = []
        for r in requests:
            key = next(k for k in self.script if k in r.messages[-1]["content"])
            self.seen.setdefault(key, []).append(r.seed)
            out.append(self.script[key][len(self.seen[key]) - 1])
        return out


def dialogue(key: str, treatment: str = "consultation") -> SourceDialogue:
    return SourceDialogue(id=f"id-{key}", source="s", source_key=key, treatment=treatment,
                          turns=[Turn(role="patient", text=f"医生，我头疼{key}"), Turn(role="doctor", text="多久了？")])


def answer(*rounds: tuple[str, str]) -> LLMResponse:
    return LLMResponse(text=json.dumps({"rounds": [{"patient": p, "doctor": d} for p, d in rounds]}, ensure_ascii=False),
                       finish_reason="stop")


GOOD = answer(("我头疼两天了", "疼在哪里？有发烧吗？"), ("太阳穴，没发烧", "睡得好吗？"), ("睡不好", "建议规律作息，不缓解去神经内科。"))
NO_FOLLOW_UP = answer(("我头疼", "知道了。"), ("嗯", "好的。"), ("还有吗", "多休息。"))


def stage(cls: type, engine: LLMEngine, **params: object):
    s = cls("st", cls.Params.model_validate({"engine": EngineConfig(model="scripted").model_dump(), **params}), run_seed=3)
    s.engine = engine  # instead of setup(): the scripted double replaces the model
    return s


def test_rewrite_retries_with_a_new_seed_then_rejects_with_the_last_raw_answer() -> None:
    engine = ScriptedEngine({
        "头疼A": [LLMResponse(text='{"rounds": [', finish_reason="stop"), GOOD],          # broken, then fine
        "头疼B": [NO_FOLLOW_UP, NO_FOLLOW_UP, NO_FOLLOW_UP],                               # always breaks a rule
        "头疼C": [LLMResponse(text='{"rounds": [{"patient": "我', finish_reason="length")] * 3,  # always cut off
    })
    s = stage(RewriteStage, engine, max_attempts=3)
    batch = [dialogue("A"), dialogue("B"), dialogue("C"), dialogue("Q", "knowledge_qa")]
    result = s.process(batch)
    check_reconciles(s, batch, result)

    accepted = {d.id: d for d in result.accepted}
    assert accepted["id-Q"] == batch[3]  # exam questions are not rewritten
    a = accepted["id-A"]
    assert [t.role for t in a.turns] == ["patient", "doctor"] * 3 and a.turns[1].text == "疼在哪里？有发烧吗？"
    assert a.rewrite_prompt.startswith("rewrite.consultation-v")
    rejected = {r.id: r for r in result.rejected}
    assert rejected["id-B"].reason == "rewrite.follow_ups" and "last of 3 answers" in rejected["id-B"].detail
    assert rejected["id-B"].raw_output == NO_FOLLOW_UP.text
    assert rejected["id-C"].reason == "rewrite.truncated"
    assert len(engine.seen["头疼A"]) == 2 and len(set(engine.seen["头疼B"])) == 3  # a new seed per attempt


def test_filter_no_is_final_not_retried() -> None:
    engine = ScriptedEngine({"头疼N": [LLMResponse(text='{"keep": false, "reason": "需要看片子"}', finish_reason="stop")]})
    s = stage(LLMFilterStage, engine)
    result = s.process([dialogue("N")])
    (rejection,) = result.rejected
    assert (rejection.reason, rejection.detail) == ("llm_filter.judged_out", "需要看片子")
    assert engine.seen["头疼N"] and len(engine.seen["头疼N"]) == 1
