"""The rule prefilter: each reason code, the voice-impossible phrasings, and the bundled
sample's known bad dialogues."""

from __future__ import annotations

import json
from importlib.resources import files

import pytest

from actors.prefilter import Prefilter, PrefilterParams
from actors.sources import SourceOptions, SourceRef
from actors.sources.sharegpt import ShareGPT
from schemas import SourceDialogue, Turn, record_id

SAMPLE = str(files("pipeline") / "demo" / "sample_consultations.json")
DOCTOR = "请问这种情况持续多久了？"


def dialogue(*patient: str, key: str = "k", doctor_only: bool = False) -> SourceDialogue:
    turns = []
    for text in patient:
        turns += [Turn(role="patient", text=text), Turn(role="doctor", text=DOCTOR)]
    if doctor_only:
        turns = [Turn(role="doctor", text=DOCTOR)]
    return SourceDialogue(id=record_id("t", key), source="t", source_key=key, turns=turns)


def prefilter(**params) -> Prefilter:
    return Prefilter("prefilter", PrefilterParams(**params), 0)


def verdict(*patient: str, **params) -> str | None:
    result = prefilter(**params).verdict(dialogue(*patient))
    return result[0] if result else None


# -- each reason ---------------------------------------------------------------------------

@pytest.mark.parametrize("opening", ["在吗", "你好", "医生", "？？？", "hi", "在 在 在 ！", "12345"])
def test_too_short(opening):
    assert verdict(opening, "我头疼三天了，一直没好。") == "too_short"


def test_too_short_counts_meaningful_characters_only():
    assert verdict("头疼发烧咳嗽") is None  # exactly 6
    assert verdict("头疼，发烧！咳？") == "too_short"  # 5 meaningful, punctuation is not counted
    assert verdict("头疼发烧咳嗽", min_patient_chars=7) == "too_short"
    assert verdict("在吗", min_patient_chars=2) is None
    # only the opening turn is measured
    assert verdict("我头疼三天了怎么办", "嗯") is None


VOICE_IMPOSSIBLE = [
    pytest.param("医生，我把化验单照片发给你了，你看看。", id="photo-sent"),
    pytest.param("我拍了张照片，你帮我看看是什么疹子。", id="took-photo"),
    pytest.param("我上传一下图片给你看。", id="upload-image"),
    pytest.param("你看一下我发的截图，上面有报告。", id="look-at-screenshot"),
    pytest.param("能帮我看看这个视频吗？孩子一直抽搐。", id="look-at-video"),
    pytest.param("截图发你了，麻烦看看。", id="screenshot-sent"),
    pytest.param("照片在上面，你看到了吗？", id="photo-above"),
    pytest.param("你帮我看看片子，是不是骨折了？", id="look-at-film"),
    pytest.param("片子发给你了，麻烦看一下。", id="film-sent"),
    pytest.param("麻烦帮我填一下这个问卷。", id="fill-questionnaire"),
    pytest.param("你帮我把这个预约表格填一下。", id="ba-form-fill"),
    pytest.param("你点一下这个链接，里面有我的病历。", id="click-link"),
    pytest.param("点击链接就能看到我的检查结果。", id="open-link"),
    pytest.param("我分享一下位置给你，附近哪家医院好？", id="share-location"),
    pytest.param("我发个定位给你，你看哪家医院最近。", id="send-location"),
    pytest.param("我的报告在 https://example.com/r/1 里面。", id="http-url"),
    pytest.param("检查报告放在www.example.com上了。", id="www-url"),
]


@pytest.mark.parametrize("text", VOICE_IMPOSSIBLE)
def test_voice_impossible(text):
    assert verdict(text) == "voice_impossible"


def test_voice_impossible_in_a_later_patient_turn():
    assert verdict("我最近胃疼得厉害，吃完饭更明显。", "我把胃镜报告照片发给你吧。") == "voice_impossible"


# Ordinary consultations that mention films, photos or forms without asking to send them.
VOICE_POSSIBLE = [
    pytest.param("上周在医院拍了片子，医生说是骨折，要打石膏吗？", id="had-xray"),
    pytest.param("发烧咳嗽三天，拍了片子说是肺炎，要住院吗？", id="fever-then-xray"),
    pytest.param("我拍了个CT，说肺上有个小结节。", id="had-ct"),
    pytest.param("医生让我去拍片，拍片有辐射吗？", id="xray-question"),
    pytest.param("体检表上写着转氨酶偏高，要紧吗？", id="form-mentioned"),
    pytest.param("我看东西有点模糊，眼睛干涩，怎么办？", id="vision-blurred"),
    pytest.param("我头疼，一发作就想吐，看了很多医生都没用。", id="saw-doctors"),
]


@pytest.mark.parametrize("text", VOICE_POSSIBLE)
def test_ordinary_mentions_pass(text):
    assert verdict(text) is None


def test_custom_voice_impossible_patterns():
    params = {"voice_impossible_patterns": (r"视频通话",)}
    assert verdict("我们视频通话吧，我给你看看伤口。", **params) == "voice_impossible"
    assert verdict("我把照片发给你了，你看看。", **params) is None  # defaults replaced


@pytest.mark.parametrize("text", [
    "Hi doctor, I have had a sore throat and a mild fever since yesterday.",
    "My blood pressure was 160/100 this morning, what should I do?",
    "头疼 headache for three days and a fever of 38.5",
])
def test_not_chinese(text):
    assert verdict(text) == "not_chinese"


@pytest.mark.parametrize("text", [
    "B超查出甲状腺结节，报告写的TI-RADS 3类，大小8mm×6mm，要做手术吗？",
    "我糖尿病5年了，吃二甲双胍500mg，最近查的HbA1c 7.2%。",
    "医生，我体检查出来转氨酶高，ALT 86U/L，要紧吗？",
])
def test_chinese_with_latin_terms_passes(text):
    assert verdict(text) is None


def test_not_chinese_ratio_is_a_parameter():
    text = "我的 ALT 和 AST 都很高"  # 6 CJK of 12 meaningful
    assert verdict(text) is None
    assert verdict(text, min_chinese_ratio=0.6) == "not_chinese"


def test_no_patient_turn():
    p = prefilter()
    assert p.verdict(dialogue(doctor_only=True))[0] == "no_patient_turn"


def test_checks_run_in_order():
    # too short wins over not Chinese; voice impossible wins over not Chinese
    assert verdict("hi") == "too_short"
    assert verdict("Please look at the photo I sent, 照片发给你了") == "voice_impossible"


# -- process ---------------------------------------------------------------------------------

def test_process_accepts_or_rejects_every_record_once():
    batch = [dialogue("我头疼三天了，怎么办？", key="good"), dialogue("在吗", key="short"),
             dialogue("我把照片发给你了，你看看。", key="photo"), dialogue("I have a headache since Monday", key="en"),
             dialogue(key="empty", doctor_only=True)]
    result = prefilter().process(batch)
    assert [d.source_key for d in result.accepted] == ["good"]
    assert result.accepted[0] is batch[0]
    reasons = {r.id: r.reason for r in result.rejected}
    assert reasons == {
        record_id("t", "short"): "prefilter.too_short",
        record_id("t", "photo"): "prefilter.voice_impossible",
        record_id("t", "en"): "prefilter.not_chinese",
        record_id("t", "empty"): "prefilter.no_patient_turn",
    }
    for rejection in result.rejected:
        assert rejection.stage == "prefilter"
        assert rejection.detail
        original = SourceDialogue.model_validate_json(rejection.record_json)
        assert original in batch and original.id == rejection.id


def test_process_empty_batch():
    result = prefilter().process([])
    assert result.accepted == [] and result.rejected == []


# -- the bundled sample ------------------------------------------------------------------

EXPECTED_SAMPLE_REJECTIONS = {
    **{f"sample-{n:04d}": "prefilter.too_short" for n in (4, 14, 25, 36, 47)},
    **{f"sample-{n:04d}": "prefilter.voice_impossible" for n in (7, 16, 23, 30, 40, 51)},
    **{f"sample-{n:04d}": "prefilter.not_chinese" for n in (11, 33)},
}


def test_bundled_sample():
    dialogues = [item.dialogue for item in ShareGPT().read(SourceRef("sample", str(SAMPLE), "consultation", SourceOptions()))]
    assert len(dialogues) == 60
    result = Prefilter("prefilter", PrefilterParams(), 0).process(dialogues)
    by_id = {d.id: d.source_key for d in dialogues}
    rejected = {by_id[r.id]: r.reason for r in result.rejected}
    assert rejected == EXPECTED_SAMPLE_REJECTIONS
    accepted = {d.source_key for d in result.accepted}
    assert accepted == {d.source_key for d in dialogues} - set(EXPECTED_SAMPLE_REJECTIONS)
    assert len(result.accepted) == 47
    for r in result.rejected:
        assert json.loads(r.record_json)["id"] == r.id
