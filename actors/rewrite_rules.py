"""Checks a structured rewrite must pass before it is accepted.

The JSON schema given to the engine already bounds the shape (rounds of {patient, doctor},
their count, each turn's length); these checks cover what a schema cannot: text that does
not read aloud, too few follow-up questions, and the cough placeholder rules.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

from schemas.llm import RewriteAnswer

COUGH = "<cough>"
# Symbols a TTS engine reads out or chokes on: markdown, brackets, list bullets, emoji.
_UNSPEAKABLE = re.compile(r"[#*`|~^\\\[\]{}<>＜＞【】•●▪►→←↑↓]|https?://|[\U0001F300-\U0001FAFF\u2600-\u27BF]")
_QUESTION = re.compile(r"[？?]")
_MENTIONS_COUGH = re.compile(r"咳")


class RewriteRules(BaseModel):
    """A prompt family's bounds (the `rules` of its variant in prompts/rewrite.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_rounds: int
    max_rounds: int
    max_chars: int
    min_follow_ups: int = 0
    cough: bool = False


def follow_ups(answer: RewriteAnswer) -> int:
    """Doctor turns that ask something, the closing advice excluded."""
    return sum(1 for r in answer.rounds[:-1] if _QUESTION.search(r.doctor))


def check_rewrite(answer: RewriteAnswer, rules: RewriteRules) -> list[str]:
    """Every rule the answer breaks, as short reason codes with details; empty = valid."""
    problems: list[str] = []
    rounds = len(answer.rounds)
    if not rules.min_rounds <= rounds <= rules.max_rounds:
        problems.append(f"rounds: {rounds}, allowed {rules.min_rounds}-{rules.max_rounds}")
    for i, r in enumerate(answer.rounds):
        for role, text in (("patient", r.patient), ("doctor", r.doctor)):
            spoken = text.replace(COUGH, "") if role == "patient" else text
            if not spoken.strip():
                problems.append(f"empty_turn: round {i} {role}")
            elif len(spoken) > rules.max_chars:
                problems.append(f"turn_too_long: round {i} {role} has {len(spoken)} characters, max {rules.max_chars}")
            symbol = _UNSPEAKABLE.search(spoken)
            if symbol:
                problems.append(f"unspeakable: round {i} {role} contains {symbol.group(0)!r}")
    asked = follow_ups(answer)
    if asked < rules.min_follow_ups:
        problems.append(f"follow_ups: {asked}, need at least {rules.min_follow_ups}")
    problems += _cough_problems(answer, rules.cough)
    return problems


def _cough_problems(answer: RewriteAnswer, cough: bool) -> list[str]:
    in_doctor = any(COUGH in r.doctor for r in answer.rounds)
    in_patient = any(COUGH in r.patient for r in answer.rounds)
    if not cough:
        return ["cough: placeholder in a dialogue that should have none"] if in_doctor or in_patient else []
    problems = ["cough: placeholder in a doctor turn"] if in_doctor else []
    if not in_patient:
        return problems + ["cough: no placeholder in any patient turn"]
    # Nobody may speak of coughing before the first cough is heard.
    before = []
    for r in answer.rounds:
        if COUGH in r.patient:
            before.append(r.patient.split(COUGH, 1)[0])
            break
        before += [r.patient, r.doctor]
    if any(_MENTIONS_COUGH.search(text) for text in before):
        problems.append("cough: coughing is mentioned before the first cough sound")
    return problems
