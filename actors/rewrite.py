"""Rewrite stage: a dialogue becomes a short spoken one (prompts/rewrite.yaml).

The variant is chosen by treatment: consultations get shorter and spoken, single-turn
Q&A grows doctor follow-ups, encyclopedia entries become one spoken Q&A, English safety
demonstrations become spoken Chinese, cough consultations get `<cough>` placeholders.
The answer is constrained to rounds of {patient, doctor} with the variant's bounds, then
checked against the rules a schema cannot express (`actors.rewrite_rules`). The output
keeps the record's id and provenance with the rewritten turns; `speech_text` is left to
the normalize stage that follows.
"""

from __future__ import annotations

from typing import Any

from actors.engines.llm import Sampling
from actors.llm_stage import Invalid, LLMParams, LLMStage, Reading
from actors.rewrite_rules import COUGH, RewriteRules, check_rewrite, turn_pattern
from prompts import Prompt
from schemas import SourceDialogue, Turn
from schemas.llm import RewriteAnswer, rewrite_schema


class RewriteParams(LLMParams):
    sampling: Sampling = Sampling(temperature=0.7, top_p=0.9, max_tokens=1024)


def rules_of(prompt: Prompt) -> RewriteRules:
    return RewriteRules.model_validate(prompt.rules)


class RewriteStage(LLMStage):
    kind = "rewrite"
    family = "rewrite"
    Params = RewriteParams
    answer_model = RewriteAnswer

    def json_schema(self, prompt: Prompt) -> dict[str, Any]:
        rules = rules_of(prompt)
        # The length bound is on the raw string, which for cough dialogues also holds the
        # placeholders; the spoken length is checked exactly afterwards.
        slack = 2 * len(COUGH) if rules.cough else 0
        return rewrite_schema(rules.min_rounds, rules.max_rounds, {
            "patient": {"maxLength": rules.max_chars + slack, "pattern": turn_pattern(cough=rules.cough)},
            "doctor": {"maxLength": rules.max_chars, "pattern": turn_pattern(cough=False)},
        })

    def read(self, record: SourceDialogue, prompt: Prompt, answer: RewriteAnswer, raw: str) -> Reading:
        problems = check_rewrite(answer, rules_of(prompt))
        if problems:
            return Invalid(problems[0].split(":", 1)[0], "; ".join(problems))
        turns = [Turn(role=role, text=text.strip())
                 for r in answer.rounds for role, text in (("patient", r.patient), ("doctor", r.doctor))]
        return record.model_copy(update={"turns": turns, "rewrite_prompt": prompt.fingerprint})
