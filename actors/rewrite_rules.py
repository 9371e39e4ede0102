"""Checks a structured rewrite must pass before it is accepted, and the per-turn pattern
the engine decodes under.

The JSON schema given to the engine already bounds the shape (rounds of {patient, doctor},
their count, each turn's length) and, through `turn_pattern`, keeps unspeakable characters
out while decoding; these checks cover what a schema cannot (links, too few follow-up
questions, the cough placeholder rules) and re-check the rest, so an endpoint that ignores
the schema cannot slip an invalid rewrite through.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

from schemas.llm import RewriteAnswer

COUGH = "<cough>"
# Characters a TTS engine reads out or chokes on: markdown, brackets, list bullets, arrows,
# emoji and pictographs, control characters. A regex character-class body, shared by the
# check and the decoding pattern.
_UNSPEAKABLE_CLASS = "#*`|~^\\\\\\[\\]{}<>＜＞【】•●▪►→←↑↓\u2600-\u27bf\U0001f300-\U0001faff\x00-\x1f\x7f"
_UNSPEAKABLE = re.compile(f"[{_UNSPEAKABLE_CLASS}]|https?://")
_QUESTION = re.compile(r"[？?]")
_MENTIONS_COUGH = re.compile(r"咳")


def turn_pattern(*, cough: bool) -> str:
    """A regex a turn's text must match while decoding: no unspeakable character, except
    the `<cough>` placeholder where it is allowed."""
    speakable = f"[^{_UNSPEAKABLE_CLASS}]"
    return f"^({speakable}|{re.escape(COUGH)})*$" if cough else f"^{speakable}*$"


class RewriteRules(BaseModel):
    """A prompt family's bounds (the `rules` of its variant in prompts/rewrite.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_rounds: int
    max_rounds: int
    max_chars: int
    min_follow_ups: int = 0
    cough: bool = False


def follow_ups(doctor_turns: list[str]) -> int:
    """Doctor turns that ask something, the closing advice (the last turn) excluded."""
    return sum(1 for text in doctor_turns[:-1] if _QUESTION.search(text))


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
    asked = follow_ups([r.doctor for r in answer.rounds])
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
