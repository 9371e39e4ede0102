"""Prompt files (versioned data), their fingerprints, the answer schemas and the rewrite
checks. No model is needed here; the LLM stages use these with a real engine."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from pydantic import ValidationError

from actors.rewrite_rules import RewriteRules, check_rewrite, follow_ups
from prompts import PROMPT_FAMILIES, load_file, load_prompt, render_dialogue
from schemas import Turn
from schemas.llm import DemographicsAnswer, FilterAnswer, RewriteAnswer, Round, rewrite_schema

TREATMENTS = ("knowledge_qa", "encyclopedia", "single_turn_qa", "consultation", "safety", "cough")


@pytest.mark.parametrize("family", PROMPT_FAMILIES)
def test_every_variant_renders_with_no_placeholder_left(family: str) -> None:
    for treatment in TREATMENTS:
        prompt = load_prompt(family, treatment)
        if prompt is None:
            continue
        system, user = (m["content"] for m in prompt.messages("患者：头疼\n医生：多久了？"))
        assert "${" not in system + user and "患者：头疼" in user
        assert "JSON" in system  # every family answers in structured JSON


def test_which_treatments_each_family_handles() -> None:
    handled = {f: {t for t in TREATMENTS if load_prompt(f, t)} for f in PROMPT_FAMILIES}
    assert handled["filter"] == {"consultation", "cough", "single_turn_qa", "encyclopedia"}
    assert handled["rewrite"] == set(TREATMENTS) - {"knowledge_qa"}  # exam questions are kept as they are
    assert "safety" not in handled["demographics"]


def test_rewrite_rules_are_valid_and_bounded() -> None:
    for treatment in ("consultation", "single_turn_qa", "encyclopedia", "safety", "cough"):
        rules = RewriteRules.model_validate(load_prompt("rewrite", treatment).rules)
        assert 1 <= rules.min_rounds <= rules.max_rounds and rules.max_chars >= 50
    assert RewriteRules.model_validate(load_prompt("rewrite", "single_turn_qa").rules).min_follow_ups >= 3
    assert RewriteRules.model_validate(load_prompt("rewrite", "cough").rules).cough


def test_fingerprint_is_stable_and_follows_the_text() -> None:
    prompt = load_prompt("rewrite", "consultation")
    assert prompt.fingerprint == load_prompt("rewrite", "consultation").fingerprint
    assert re.fullmatch(r"rewrite\.consultation-v\d+-[0-9a-f]{12}", prompt.fingerprint)
    assert dataclasses.replace(prompt, system=prompt.system + "。").fingerprint != prompt.fingerprint
    assert dataclasses.replace(prompt, rules={**prompt.rules, "max_rounds": 9}).fingerprint != prompt.fingerprint
    assert dataclasses.replace(prompt, version=prompt.version + 1).fingerprint != prompt.fingerprint
    assert load_prompt("rewrite", "cough").fingerprint != prompt.fingerprint


def test_prompt_files_refuse_unknown_keys(tmp_path) -> None:
    raw = load_file("filter").model_dump()
    raw["colour"] = "red"
    with pytest.raises(ValidationError):
        type(load_file("filter")).model_validate(raw)


def test_render_dialogue() -> None:
    turns = [Turn(role="patient", text="我头疼"), Turn(role="doctor", text="多久了？")]
    assert render_dialogue(turns) == "患者：我头疼\n医生：多久了？"


def test_answer_schemas() -> None:
    schema = rewrite_schema(2, 5, {"patient": {"maxLength": 94}, "doctor": {"maxLength": 80, "pattern": "^a*$"}})
    assert schema["properties"]["rounds"]["minItems"] == 2 and schema["properties"]["rounds"]["maxItems"] == 5
    doctor = schema["$defs"]["Round"]["properties"]["doctor"]
    assert (doctor["maxLength"], doctor["pattern"], doctor["minLength"]) == (80, "^a*$", 1)
    assert schema["$defs"]["Round"]["properties"]["patient"]["maxLength"] == 94
    json.dumps(schema)  # serialisable for an engine
    assert FilterAnswer.model_validate_json('{"keep": false, "reason": "需要看图片"}').keep is False
    assert DemographicsAnswer.model_json_schema()["properties"]["gender"]["enum"] == ["male", "female", "unknown"]
    with pytest.raises(ValidationError):
        DemographicsAnswer.model_validate({"gender": "男", "age_group": "adult"})


@pytest.mark.parametrize("text, cough, speakable", [
    ("头疼三天了，要紧吗？", False, True), ("体温38.5℃，吃了布洛芬。", False, True),
    ("**注意**", False, False), ("见[链接]", False, False), ("a{b}", False, False), ("好\b的", False, False),
    ("😀", False, False), ("→右边", False, False), ("反斜杠\\", False, False),
    ("我<cough>嗓子疼", True, True), ("我<cough>嗓子疼", False, False), ("<b>", True, False), ("<cou", True, False),
])
def test_turn_pattern_matches_the_speakable_check(text: str, cough: bool, speakable: bool) -> None:
    import re

    from actors.rewrite_rules import turn_pattern

    assert bool(re.fullmatch(turn_pattern(cough=cough), text)) == speakable
    if not cough and speakable:  # the post-check agrees with the decoding pattern
        assert check_rewrite(_answer((text, "好的，多休息？"), (text, "去看看吧。")), RULES) == []


RULES = RewriteRules(min_rounds=2, max_rounds=4, max_chars=40, min_follow_ups=1)


def _answer(*pairs: tuple[str, str]) -> RewriteAnswer:
    return RewriteAnswer(rounds=[Round(patient=p, doctor=d) for p, d in pairs])


GOOD = _answer(("医生，我这几天头疼。", "疼了几天了？有没有发烧？"), ("三天了，没发烧。", "建议先休息，不缓解就去神经内科看看。"))


@pytest.mark.parametrize("answer, rules, expected", [
    (GOOD, RULES, []),
    (_answer(("头疼", "多休息。")), RULES, ["rounds: 1, allowed 2-4", "follow_ups: 0, need at least 1"]),
    (_answer(("头疼" * 30, "疼多久了？"), ("三天", "去医院。")), RULES, ["turn_too_long: round 0 patient has 60 characters, max 40"]),
    (_answer(("**头疼**", "多久了？"), ("三天", "去医院。")), RULES, ["unspeakable: round 0 patient contains '*'"]),
    (_answer(("头疼", "看这里 https://x.cn 多久了？"), ("三天", "去医院。")), RULES, ["unspeakable: round 0 doctor contains 'https://'"]),
    (_answer(("头疼", "多久了？"), ("三天", "去医院。🙂")), RULES, ["unspeakable: round 1 doctor contains '🙂'"]),
    (_answer(("头疼<cough>", "多久了？"), ("三天", "去医院。")), RULES, ["cough: placeholder in a dialogue that should have none"]),
])
def test_check_rewrite(answer: RewriteAnswer, rules: RewriteRules, expected: list[str]) -> None:
    assert check_rewrite(answer, rules) == expected


COUGH_RULES = RewriteRules(min_rounds=2, max_rounds=4, max_chars=40, min_follow_ups=1, cough=True)


@pytest.mark.parametrize("pairs, expected", [
    ((("医生，我嗓子不舒服<cough>，晚上更厉害。", "这样多久了？有痰吗？"), ("一周了，有白痰。", "建议去呼吸科查个血常规。")), []),
    ((("医生，我嗓子不舒服。", "这样多久了？"), ("一周了。", "去呼吸科看看。")), ["cough: no placeholder in any patient turn"]),
    ((("我一直咳嗽，<cough>很难受。", "多久了？"), ("一周。", "去呼吸科。")),
     ["cough: coughing is mentioned before the first cough sound"]),
    ((("嗓子不舒服<cough>", "我听到你咳<cough>了，多久了？"), ("一周。", "去呼吸科。")),
     ["unspeakable: round 0 doctor contains '<'", "cough: placeholder in a doctor turn"]),
])
def test_cough_rules(pairs, expected) -> None:
    assert check_rewrite(_answer(*pairs), COUGH_RULES) == expected


def test_follow_ups_do_not_count_the_closing_advice() -> None:
    assert follow_ups(["好好休息，好吗？"]) == 0
    assert follow_ups([r.doctor for r in GOOD.rounds]) == 1
