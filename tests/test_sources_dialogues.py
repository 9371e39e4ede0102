"""The multi-turn dialogue adapters: CMtMedQA, MedDG (txt and pickle), MedDialog (raw and
processed). Fixtures under tests/fixtures/sources/{cmtmedqa,meddg,meddialog} are invented
text in each corpus's on-disk layout; damaged variants (GBK, BOM, truncation, pickles) are
made here from them."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from actors.sources import SourceItem, SourceRef
from actors.sources.cmtmedqa import CMtMedQA, CMtMedQAOptions
from actors.sources.meddg import MedDG, MedDGOptions
from actors.sources.meddialog import MedDialog, MedDialogOptions
from schemas import record_id

FIXTURES = Path(__file__).parent / "fixtures" / "sources"
CMT = FIXTURES / "cmtmedqa"
MEDDG = FIXTURES / "meddg"
MEDDIALOG = FIXTURES / "meddialog"


def read(cls, path, source: str = "src", **options) -> list[SourceItem]:
    ref = SourceRef(source, str(path), cls.default_treatment, cls.Options(**options))
    return list(cls().read(ref))


def reasons(items: list[SourceItem]) -> Counter:
    return Counter(i.reason for i in items)


def by_key(items: list[SourceItem]) -> dict:
    return {i.dialogue.source_key: i.dialogue for i in items if i.dialogue is not None}


def turns(dialogue) -> list[tuple[str, str]]:
    return [(t.role, t.text) for t in dialogue.turns]


def failures(items: list[SourceItem]) -> list[SourceItem]:
    return [i for i in items if i.dialogue is None]


def assert_well_formed(items: list[SourceItem]) -> None:
    """Every item is a dialogue or a failure whose detail starts with its location; locations
    (the ids of quarantined items) are unique, and so are dialogue ids."""
    for item in items:
        if item.dialogue is None:
            assert item.reason.startswith("ingest.") and item.detail.startswith(f"{item.location}: ")
        else:
            assert item.reason == "" and item.dialogue.turns[0].role == "patient"
            roles = [t.role for t in item.dialogue.turns]
            assert all(a != b for a, b in zip(roles, roles[1:]))
    assert len({i.location for i in items}) == len(items)
    ids = [i.dialogue.id for i in items if i.dialogue is not None]
    assert len(set(ids)) == len(ids)


def copy_as(src: Path, dst: Path, encoding: str = "utf-8", *, bom: bool = False, src_encoding: str = "utf-8") -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    text = src.read_bytes().decode(src_encoding).removeprefix("\ufeff")
    dst.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode(encoding))
    return dst


def same_output(a: list[SourceItem], b: list[SourceItem]) -> None:
    assert [i.dialogue for i in a] == [i.dialogue for i in b]
    assert [i.reason for i in a] == [i.reason for i in b]


def test_formats_and_treatments():
    assert (CMtMedQA.format, CMtMedQA.default_treatment) == ("cmtmedqa", "consultation")
    assert (MedDG.format, MedDG.default_treatment) == ("meddg", "consultation")
    assert (MedDialog.format, MedDialog.default_treatment) == ("meddialog", "cough")


# == CMtMedQA ==================================================================================

def test_cmtmedqa_fixture():
    path = CMT / "CMtMedQA.json"
    items = read(CMtMedQA, path)
    assert_well_formed(items)
    assert reasons(items) == Counter({"": 5, "ingest.malformed": 3, "ingest.no_doctor_turn": 1})
    d = by_key(items)
    assert turns(d["k1001"]) == [
        ("patient", "大夫您好，我咳嗽快一个星期了，晚上更厉害。"), ("doctor", "您好，咳嗽的时候有痰吗？有没有发烧？"),
        ("patient", "有一点白痰，没有发烧。"), ("doctor", "这种情况可能是支气管受了刺激。"),
        ("patient", "需要做什么检查吗？"), ("doctor", "建议先拍个胸片，再查个血常规。")]
    assert (d["k1001"].category, d["k1001"].subcategory, d["k1001"].treatment) == ("内科", "呼吸内科", "consultation")
    assert d["k1001"].id == record_id("src", "k1001")
    # an empty instruction: the two doctor turns are merged with a newline
    assert turns(d["k1002"]) == [("patient", "我腰疼两个月了，弯腰就疼。"),
                                 ("doctor", "疼痛有没有放射到腿上？\n平时注意不要久坐，适当做些拉伸。")]
    # an empty reply inside the history: the patient's two turns are merged
    assert turns(d["k1009"])[:2] == [("patient", "眼睛干涩，看电脑久了就疼。\n还有点怕光。"),
                                     ("doctor", "可以先用人工泪液，每天三四次。")]
    # a non-empty `input` is kept with the instruction
    assert turns(d["k1007"])[0] == ("patient", "这个化验结果正常吗？\n血红蛋白 128 g/L")
    # no id: a content key
    (no_id,) = [k for k in d if k.startswith("sha:")]
    assert turns(d[no_id]) == [("patient", "孩子三岁，流鼻涕两天了，要吃药吗？"), ("doctor", "先多喝水观察，如果发烧再来看。")]
    bad = {i.location: i for i in failures(items)}
    assert "history[0] must be a [patient, doctor] pair" in bad[f"{path} record 3"].detail
    assert "history[0]" in bad[f"{path} record 4"].detail and "null" in bad[f"{path} record 4"].detail
    assert bad[f"{path} record 5"].reason == "ingest.no_doctor_turn"
    assert "got a JSON list" in bad[f"{path} record 7"].detail
    assert json.loads(bad[f"{path} record 3"].raw)["id"] == "k1004"


def test_cmtmedqa_ids_are_stable(tmp_path):
    first = read(CMtMedQA, CMT / "CMtMedQA.json")
    again = read(CMtMedQA, CMT / "CMtMedQA.json")
    assert [i.dialogue.id for i in first if i.dialogue] == [i.dialogue.id for i in again if i.dialogue]
    # the content key does not depend on the position or the file
    records = json.loads((CMT / "CMtMedQA.json").read_text(encoding="utf-8"))
    moved = tmp_path / "other.jsonl"
    moved.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in reversed(records)), encoding="utf-8")
    assert by_key(read(CMtMedQA, moved)).keys() == by_key(first).keys()


def test_cmtmedqa_folder_split_and_bom(tmp_path):
    assert [i.location for i in read(CMtMedQA, CMT)] == [i.location for i in read(CMtMedQA, CMT / "CMtMedQA.json")]
    test = read(CMtMedQA, CMT, split="test")  # CMtMedQA_test.json starts with a UTF-8 BOM
    assert reasons(test) == Counter({"": 2})
    assert turns(by_key(test)["t0002"])[-2:] == [("patient", "好的，谢谢。"), ("doctor", "不用谢。")]
    # a converted ShareGPT file next to it is not read
    (tmp_path / "CMtMedQA-sharegpt.json").write_text('[{"conversations": []}]', encoding="utf-8")
    shutil.copy(CMT / "CMtMedQA.json", tmp_path / "CMtMedQA.json")
    assert reasons(read(CMtMedQA, tmp_path))["ingest.malformed"] == 3
    (missing,) = read(CMtMedQA, tmp_path, split="test")
    assert missing.reason == "ingest.missing_file" and "CMtMedQA_test.json" in missing.detail
    with pytest.raises(ValidationError):
        CMtMedQAOptions(split="dev")


def test_cmtmedqa_truncated_array(tmp_path):
    text = (CMT / "CMtMedQA.json").read_text(encoding="utf-8")
    cut = tmp_path / "CMtMedQA.json"
    cut.write_text(text[: text.index('"k1004"') + 20], encoding="utf-8")
    items = read(CMtMedQA, cut)
    assert [i.reason for i in items] == ["", "", "", "ingest.unreadable_file"]
    assert items[-1].detail.startswith(f"{cut} after record 2: ")


def test_cmtmedqa_gbk_reads_like_utf8(tmp_path):
    gbk = copy_as(CMT / "CMtMedQA.json", tmp_path / "CMtMedQA.json", "gbk")
    same_output(read(CMtMedQA, gbk), read(CMtMedQA, CMT / "CMtMedQA.json"))


def _cmt(**fields) -> dict:
    return {"id": "x1", "cate1": "内科", "cate2": "内科", "instruction": "怎么办？", "input": "",
            "output": "多休息。", "history": [["我头疼。", "多久了？"]]} | fields


BAD_CMT = [
    ("history_not_list", _cmt(history="我头疼"), "ingest.malformed", "'history' must be a list"),
    ("pair_of_three", _cmt(history=[["a", "b", "c"]]), "ingest.malformed", "history[0] must be a [patient, doctor] pair"),
    ("pair_not_list", _cmt(history=[["我头疼。", "多久了？"], "三天"]), "ingest.malformed", "history[1]"),
    ("instruction_number", _cmt(instruction=3), "ingest.malformed", "'instruction' must be a string"),
    ("sharegpt_record", {"id": "x", "conversations": []}, "ingest.malformed", "use format sharegpt"),
    ("doctor_only", _cmt(history=[], instruction=""), "ingest.bad_role", "first turn must be the patient's"),
    ("all_empty", _cmt(history=[], instruction="", output=" "), "ingest.malformed", "no utterance has any text"),
]


@pytest.mark.parametrize("record, reason, fragment", [b[1:] for b in BAD_CMT], ids=[b[0] for b in BAD_CMT])
def test_cmtmedqa_unmappable_records(tmp_path, record, reason, fragment):
    path = tmp_path / "CMtMedQA.json"
    path.write_text(json.dumps([_cmt(id="ok1"), record, _cmt(id="ok2")], ensure_ascii=False), encoding="utf-8")
    items = read(CMtMedQA, path)
    assert [i.reason for i in items] == ["", reason, ""]
    assert items[1].detail.startswith(f"{path} record 1: ") and fragment in items[1].detail


def test_cmtmedqa_null_history_and_missing_fields(tmp_path):
    path = tmp_path / "CMtMedQA.json"
    record = {"id": 7, "instruction": "我咳嗽。", "output": "多喝水。", "history": None}
    path.write_text(json.dumps([record], ensure_ascii=False), encoding="utf-8")
    (item,) = read(CMtMedQA, path)
    assert item.dialogue.source_key == "7"
    assert (item.dialogue.category, item.dialogue.subcategory) == (None, None)
    assert turns(item.dialogue) == [("patient", "我咳嗽。"), ("doctor", "多喝水。")]


# == MedDG =====================================================================================

MEDDG_KEYS = ["train:0", "train:1", "train:3", "dev:0", "dev:1", "test:0", "test:2"]


def test_meddg_folder():
    items = read(MedDG, MEDDG)
    assert_well_formed(items)
    assert reasons(items) == Counter({"": 7, "ingest.malformed": 1, "ingest.bad_role": 1})
    d = by_key(items)
    assert list(d) == MEDDG_KEYS
    # ids restart in every split; the keys (and ids) do not collide
    assert len({d[k].id for k in ("train:0", "dev:0", "test:0")}) == 3
    assert d["test:0"].id == record_id("src", "test:0")
    # consecutive same-speaker utterances are merged on both sides; text is left as it is
    assert turns(d["train:0"]) == [
        ("patient", "饭后胃里发胀，还老打嗝，这是怎么了（男，32岁）"), ("doctor", "您好，这种情况有多长时间了？"),
        ("patient", "差不多半个月了。\n有时候还反酸。"), ("doctor", "平时吃饭规律吗？\n建议做个胃镜看看。")]
    assert {k: (d[k].gender, d[k].age) for k in d} == {
        "train:0": ("male", 32),  # full-width brackets and comma
        "train:1": ("female", 45),  # ASCII brackets and comma, no 岁
        "train:3": ("female", 60),  # the last dialogue of its file, with the pattern
        "dev:0": ("male", 28),  # a GBK file with CRLF line ends
        "dev:1": ("unknown", None),  # the last dialogue, without the pattern
        "test:0": ("female", 8),  # full-width, no 岁
        "test:2": ("unknown", None),
    }
    assert turns(d["train:3"])[-1] == ("doctor", "建议尽快去医院查一下大便潜血。")
    bad = {i.location: i for i in failures(items)}
    invalid = bad[f"{MEDDG / 'train.txt'} dialogue 2 (line 15)"]
    assert invalid.reason == "ingest.malformed" and "line 17 is not valid JSON" in invalid.detail
    assert invalid.raw.startswith("dialog 2\n") and invalid.raw.count("\n") == 4
    assert bad[f"{MEDDG / 'test.txt'} dialogue 1 (line 7)"].reason == "ingest.bad_role"


def test_meddg_splits_option_and_missing_split(tmp_path):
    assert list(by_key(read(MedDG, MEDDG, splits=["test"]))) == ["test:0", "test:2"]
    shutil.copy(MEDDG / "test.txt", tmp_path / "test.txt")
    items = read(MedDG, tmp_path, splits=["train", "test"])
    assert items[0].reason == "ingest.missing_file" and "train.txt or train.pk" in items[0].detail
    assert list(by_key(items)) == ["test:0", "test:2"]
    with pytest.raises(ValidationError):
        MedDGOptions(splits=["validation"])


def test_meddg_a_file_is_read_whatever_its_name(tmp_path):
    path = shutil.copy(MEDDG / "test.txt", tmp_path / "meddg_test_export.txt")
    assert list(by_key(read(MedDG, path))) == ["meddg_test_export:0", "meddg_test_export:2"]
    odd = tmp_path / "train.json"
    odd.write_text("[]", encoding="utf-8")
    (item,) = read(MedDG, odd)
    assert item.reason == "ingest.unsupported_file" and str(odd) in item.detail


def test_meddg_gbk_and_bom_read_like_utf8(tmp_path):
    utf8 = copy_as(MEDDG / "dev.txt", tmp_path / "utf8" / "dev.txt", src_encoding="gbk")
    same_output(read(MedDG, MEDDG / "dev.txt"), read(MedDG, utf8))
    bom = copy_as(MEDDG / "train.txt", tmp_path / "bom" / "train.txt", bom=True)
    gbk = copy_as(MEDDG / "train.txt", tmp_path / "gbk" / "train.txt", "gbk")
    plain = read(MedDG, MEDDG / "train.txt")
    same_output(read(MedDG, bom), plain)
    same_output(read(MedDG, gbk), plain)


def _txt(*dialogues: list[tuple[str, str]]) -> str:
    lines = []
    for n, dialogue in enumerate(dialogues):
        lines.append(f"dialog {n}")
        lines += [json.dumps({"id": s, "Sentence": t}, ensure_ascii=False) for s, t in dialogue]
    return "\n".join(lines)


ONE = [("Patients", "最近胃口不好（男，70岁）"), ("Doctor", "有没有体重下降？")]
TWO = [("Patients", "肚子胀"), ("Doctor", "吃得多吗？")]


def test_meddg_last_dialogue_is_read_like_the_others(tmp_path):
    (tmp_path / "a.txt").write_text(_txt(ONE, TWO), encoding="utf-8")
    (tmp_path / "b.txt").write_text(_txt(TWO, ONE) + "\n\n", encoding="utf-8")
    a, b = by_key(read(MedDG, tmp_path / "a.txt")), by_key(read(MedDG, tmp_path / "b.txt"))
    assert (a["a:0"].gender, a["a:0"].age) == (b["b:1"].gender, b["b:1"].age) == ("male", 70)
    assert turns(a["a:0"]) == turns(b["b:1"]) and turns(a["a:1"]) == turns(b["b:0"])


def test_meddg_txt_damage(tmp_path):
    path = tmp_path / "train.txt"
    lines = ["说明：这一行不属于任何对话", "dialog 0", "", "dialog 1",
             json.dumps({"id": "Patients", "Sentence": "胃疼"}, ensure_ascii=False), '["Doctor", "多久了"]',
             "dialog 2", json.dumps({"Sentence": "没有说话人"}, ensure_ascii=False),
             "dialog 3", json.dumps({"id": "Patients", "Sentence": "便秘"}, ensure_ascii=False)]
    raw = "\n".join(lines).encode() + b"\n" + '{"id": "Doctor", "Sentence": "多喝水'.encode() + b"\xff\xfe" + b'"}\n'
    path.write_bytes(raw + "dialog 4\n".encode() + "\n".join(json.dumps({"id": s, "Sentence": t}, ensure_ascii=False)
                                                        for s, t in TWO).encode())
    items = read(MedDG, path)
    assert_well_formed(items)
    assert [(i.reason, i.location.removeprefix(str(path))) for i in items] == [
        ("ingest.malformed", " line 1"), ("ingest.malformed", " dialogue 0 (line 2)"),
        ("ingest.malformed", " dialogue 1 (line 4)"), ("ingest.malformed", " dialogue 2 (line 7)"),
        ("ingest.bad_encoding", " dialogue 3 (line 9)"), ("", " dialogue 4 (line 12)")]
    assert "before the first 'dialog' line" in items[0].detail
    assert "no utterance lines" in items[1].detail
    assert "line 6 is a JSON list" in items[2].detail
    assert "line 8 has no speaker 'id'" in items[3].detail
    assert "line 11 cannot be decoded" in items[4].detail
    notes = tmp_path / "notes.txt"
    notes.write_text("这是说明文件\n不是对话\n", encoding="utf-8")
    (item,) = read(MedDG, notes)
    assert item.reason == "ingest.unsupported_file"


# -- MedDG pickles ------------------------------------------------------------------------

def _pk_utt(speaker: str, sentence: str) -> dict:
    return {"id": speaker, "sentence": sentence, "sym": [], "medical": [], "check": [], "prop": [], "diease": []}


def _pickle_from_txt(txt: Path) -> list:
    """The dialogues of a MedDG txt fixture in the upstream pickle layout (dis/doc, sentence)."""
    dialogues: list = []
    for line in txt.read_text(encoding="utf-8").splitlines():
        if line.startswith("dialog"):
            dialogues.append([])
        elif line.strip():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            dialogues[-1].append(_pk_utt("dis" if obj["id"] == "Patients" else "doc", obj["Sentence"]))
    return dialogues


def test_meddg_pickle_reads_like_txt(tmp_path):
    data = _pickle_from_txt(MEDDG / "train.txt")
    data[2] = [_pk_utt("dis", "胃疼得厉害"), _pk_utt("doc", "疼了多久了？")]  # the txt's broken dialogue, whole
    (tmp_path / "train.pk").write_bytes(pickle.dumps(data, protocol=4))
    items = read(MedDG, tmp_path / "train.pk")
    assert_well_formed(items)
    from_txt = by_key(read(MedDG, MEDDG / "train.txt"))
    from_pk = by_key(items)
    assert list(from_pk) == ["train:0", "train:1", "train:2", "train:3"]
    for key, dialogue in from_txt.items():
        assert from_pk[key] == dialogue  # same key, id, turns, gender and age as the txt export
    assert items[2].location == f"{tmp_path / 'train.pk'} dialogue 2"


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_meddg_pickle_protocols_and_bad_dialogues(tmp_path, protocol):
    data = [[_pk_utt("dis", "胃疼（女，33岁）"), _pk_utt("doc", "多久了？")],
            "不是对话", [_pk_utt("dis", "胃疼"), ["doc", "多久了"]],
            [_pk_utt("nurse", "你好")], [_pk_utt("dis", "只有病人")]]
    (tmp_path / "dev.pk").write_bytes(pickle.dumps(data, protocol=protocol))
    items = read(MedDG, tmp_path / "dev.pk")
    assert_well_formed(items)
    assert [i.reason for i in items] == ["", "ingest.malformed", "ingest.malformed", "ingest.bad_role",
                                         "ingest.no_doctor_turn"]
    assert (items[0].dialogue.gender, items[0].dialogue.age, items[0].dialogue.source_key) == ("female", 33, "dev:0")
    assert "utterance 1 is a list" in items[2].detail
    assert "'nurse'" in items[3].detail


class _Evil:
    """Pickles to a call of os.system: what a malicious download would hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_meddg_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "train.pk"
    path.write_bytes(pickle.dumps([[_pk_utt("dis", "胃疼"), _pk_utt("doc", _Evil(marker))]]))  # noqa: S301
    assert b"system" in path.read_bytes()
    items = read(MedDG, path)
    assert not marker.exists()
    (item,) = items
    assert item.reason == "ingest.unreadable_file"
    assert item.detail.startswith(f"{path}: ") and "refused" in item.detail and "system" in item.detail


@pytest.mark.parametrize("payload, reason", [
    (pickle.dumps(eval), "ingest.unreadable_file"),  # any global is refused, builtins too  # noqa: S307
    (pickle.dumps([[_pk_utt("dis", "胃疼")]])[:-9], "ingest.unreadable_file"),  # truncated
    (b"not a pickle at all", "ingest.unreadable_file"),
    (b"", "ingest.unreadable_file"),
    (pickle.dumps({"腹痛": 1}), "ingest.unsupported_file"),  # e.g. 160_last_topic2num.pk
    (pickle.dumps([{"history": ["胃疼"], "response": "多久了？", "id": 1}]), "ingest.unsupported_file"),  # gen_*.pk
])
def test_meddg_bad_pickle_files_are_one_item(tmp_path, payload, reason):
    path = tmp_path / "test.pk"
    path.write_bytes(payload)
    (item,) = read(MedDG, path)
    assert item.reason == reason and item.location == str(path) and item.detail.startswith(f"{path}: ")


@pytest.mark.parametrize("prefer, read_kind", [("txt", "txt"), ("pickle", "pickle")])
def test_meddg_split_in_both_formats(tmp_path, prefer, read_kind):
    shutil.copy(MEDDG / "train.txt", tmp_path / "train.txt")
    (tmp_path / "train.pk").write_bytes(pickle.dumps(_pickle_from_txt(MEDDG / "train.txt")))
    items = read(MedDG, tmp_path, splits=["train"], prefer=prefer)
    skipped = items[0]
    assert skipped.reason == "ingest.not_selected"
    assert skipped.location == str(tmp_path / ("train.pk" if read_kind == "txt" else "train.txt"))
    assert f"prefer: {'pickle' if read_kind == 'txt' else 'txt'}" in skipped.detail
    assert all(str(tmp_path / ("train.txt" if read_kind == "txt" else "train.pk")) in i.location for i in items[1:])


# == MedDialog =================================================================================

RAW = MEDDIALOG / "2020.txt"
PROCESSED = MEDDIALOG / "processed"


def test_meddialog_raw_fixture():
    items = read(MedDialog, RAW)
    assert_well_formed(items)
    assert reasons(items) == Counter({"": 3, "ingest.not_selected": 1, "ingest.no_doctor_turn": 1,
                                      "ingest.malformed": 1})
    d = by_key(items)
    assert list(d) == ["2020:101", "2020:103", "2020:105"]
    assert d["2020:101"].id == record_id("src", "2020:101") and d["2020:101"].treatment == "cough"
    # the description is the first patient turn, not repeated; 病人: (ASCII) merges with 病人：
    assert turns(d["2020:101"]) == [("patient", "咳嗽两周了，晚上咳得睡不着，有黄痰。"), ("doctor", "有没有发烧？"),
                               ("patient", "没有发烧。\n就是嗓子有点疼。"), ("doctor", "可以先吃点止咳化痰的药，多喝温水。")]
    assert d["2020:101"].category == "呼吸内科"
    assert turns(d["2020:103"])[0] == ("patient", "孩子晚上睡觉不踏实。\n孩子这两天一直咳，晚上更明显。")
    assert d["2020:103"].category is None
    # the last block (no blank line after it): ASCII colons, a continued utterance
    assert turns(d["2020:105"]) == [("patient", "宝宝咳痰咳不出来，怎么办？"), ("doctor", "可以拍拍背。\n多给宝宝喝水。")]
    assert d["2020:105"].category == "儿科"
    bad = {i.reason: i for i in failures(items)}
    skipped = bad["ingest.not_selected"]
    assert skipped.location == f"{RAW} dialogue id=102 (line 30)"
    assert json.loads(skipped.raw) == {"id": "2020:102", "patient": "手上起了很多小红点，很痒。"}
    assert "cough_only: false" in skipped.detail
    assert bad["ingest.no_doctor_turn"].location == f"{RAW} dialogue id=104 (line 61)"
    assert "line 75" in bad["ingest.malformed"].detail and "id=106" in bad["ingest.malformed"].location


def test_meddialog_options():
    everything = read(MedDialog, RAW, cough_only=False)
    assert reasons(everything) == Counter({"": 4, "ingest.no_doctor_turn": 1, "ingest.malformed": 1})
    assert turns(by_key(everything)["2020:102"]) == [("patient", "手上起了很多小红点，很痒。"), ("doctor", "最近接触过什么新的东西吗？")]
    rash = read(MedDialog, RAW, cough_keywords=["小红点"])
    assert list(by_key(rash)) == ["2020:102"] and reasons(rash)["ingest.not_selected"] == 5
    no_description = by_key(read(MedDialog, RAW, include_description=False))
    assert turns(no_description["2020:103"])[0] == ("patient", "孩子这两天一直咳，晚上更明显。")
    assert turns(no_description["2020:101"])[0] == ("patient", "咳嗽两周了，晚上咳得睡不着，有黄痰。")
    assert MedDialogOptions(cough_keywords=[" 咳 ", "咳"]).cough_keywords == ("咳",)
    for bad in ({"cough_keywords": []}, {"cough_keywords": ["  "]}, {"cough": True}):
        with pytest.raises(ValidationError):
            MedDialogOptions(**bad)


def test_meddialog_processed():
    items = read(MedDialog, PROCESSED)
    assert_well_formed(items)
    assert [(i.reason, i.location.removeprefix(str(PROCESSED) + "/")) for i in items] == [
        ("", "test_data.jsonl line 1"), ("ingest.malformed", "test_data.jsonl line 2"),
        ("ingest.not_selected", "test_data.jsonl line 3"),
        ("", "train_data.json record 0"), ("ingest.not_selected", "train_data.json record 1"),
        ("", "train_data.json record 2"), ("ingest.bad_role", "train_data.json record 3"),
        ("", "train_data.json record 4")]
    ok = [i.dialogue for i in items if i.dialogue]
    assert turns(ok[0]) == [("patient", "干咳没有痰。"), ("doctor", "可能是过敏，有没有过敏史？")]  # after a BOM
    assert turns(ok[2]) == [("patient", "我一直咳，夜里也咳。\n有时候还胸闷。"), ("doctor", "建议拍个胸片。")]
    assert turns(ok[3]) == [("patient", "咳了三天了。"), ("doctor", "先吃点止咳药。")]  # a bare list
    assert all(d.source_key.startswith("sha:") for d in ok)
    assert json.loads(items[4].raw) == {"patient": "头疼得厉害。"}
    assert "does not start with 病人： or 医生：" in items[6].detail


def test_meddialog_processed_keys_do_not_depend_on_the_file(tmp_path):
    """The same records as JSON lines, in reverse order: the first line is then a bare list,
    which `json_records` would take for a JSON array (hence the adapter's own .jsonl reader)."""
    records = json.loads((PROCESSED / "train_data.json").read_text(encoding="utf-8"))
    lines = tmp_path / "valid_data.jsonl"
    lines.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in reversed(records)), encoding="utf-8")
    assert sorted(by_key(read(MedDialog, lines))) == sorted(by_key(read(MedDialog, PROCESSED / "train_data.json")))


def test_meddialog_folder_with_both_layouts_reads_the_raw_files():
    items = read(MedDialog, MEDDIALOG)
    skipped = [i for i in items if i.reason == "ingest.not_selected" and i.location.startswith(str(PROCESSED))]
    assert sorted(i.location for i in skipped) == [str(PROCESSED / "test_data.jsonl"), str(PROCESSED / "train_data.json")]
    assert list(by_key(items)) == ["2020:101", "2020:103", "2020:105"]


def test_meddialog_gbk_reads_like_utf8(tmp_path):
    gbk = copy_as(RAW, tmp_path / "2020.txt", "gbk")
    same_output(read(MedDialog, gbk, cough_only=False), read(MedDialog, RAW, cough_only=False))
    gbk_lines = copy_as(PROCESSED / "test_data.jsonl", tmp_path / "test_data.jsonl", "gbk")
    same_output(read(MedDialog, gbk_lines), read(MedDialog, PROCESSED / "test_data.jsonl"))


def test_meddialog_raw_damage(tmp_path):
    path = tmp_path / "2011.txt"
    text = "前言：不属于任何问诊\n\nid=7\nhttp://x\n\nDialogue\n病人：\n一直咳，痰多。\n医生：\n\n病人：\n还有点喘。\n\nid=8\n"
    path.write_text(text, encoding="utf-8")
    items = read(MedDialog, path, cough_only=False)
    assert_well_formed(items)
    assert [i.reason for i in items] == ["ingest.malformed", "ingest.no_doctor_turn", "ingest.malformed"]
    # with the cough selection, the empty block mentions no cough: not selected
    assert [i.reason for i in read(MedDialog, path)][2] == "ingest.not_selected"
    assert items[0].location == f"{path} line 1" and "before the first 'id=' line" in items[0].detail
    assert "patient turns only" in items[1].detail  # the doctor's utterance was empty
    assert "neither a 病情描述 nor Dialogue utterances" in items[2].detail
    notes = tmp_path / "README.txt"
    notes.write_text("MedDialog 说明\n", encoding="utf-8")
    (item,) = read(MedDialog, notes)
    assert item.reason == "ingest.unsupported_file"
    folder = tmp_path / "nothing_here"
    folder.mkdir()
    (empty,) = read(MedDialog, folder)
    assert empty.reason == "ingest.no_input"


# == never raising =============================================================================

GARBAGE = [b"\x00\xff\xfe garbage \x80\x81", b"[{\"id\": 1", b"\xef\xbb\xbf", "{咳嗽}\n医生：\n".encode("gbk"),
           b"id=1\n\xff\xff\nDialogue\n"]


@pytest.mark.parametrize("cls, name", [(CMtMedQA, "CMtMedQA.json"), (MedDG, "train.txt"), (MedDG, "train.pk"),
                                       (MedDialog, "2019.txt"), (MedDialog, "train_data.json")])
@pytest.mark.parametrize("payload", GARBAGE)
def test_garbage_never_raises(tmp_path, cls, name, payload):
    path = tmp_path / name
    path.write_bytes(payload)
    items = read(cls, path)
    assert_well_formed(items)
    assert all(str(path) in i.detail for i in failures(items))
    assert read(cls, tmp_path / "missing" / name)[0].reason.startswith("ingest.")


# == a GBK file that breaks off part-way ==========================================================

def _big_gbk(path: Path, blocks: list[str], bad_at: int) -> int:
    """Write `blocks` GBK-encoded, with two bytes no GBK text holds inside block `bad_at`
    (past the 1 MiB the reader decodes at a time); returns how many blocks come before it."""
    data = b"".join(b.encode("gbk") for b in blocks[:bad_at])
    assert len(data) > 1.2 * (1 << 20)
    bad = blocks[bad_at].encode("gbk")
    path.write_bytes(data + bad[: len(bad) // 2] + b"\xff\xff" + bad[len(bad) // 2:]
                     + b"".join(b.encode("gbk") for b in blocks[bad_at + 1:]))
    return bad_at


def test_meddg_gbk_file_breaking_off_is_reported(tmp_path):
    talk = [("Patients", "最近胃不舒服，吃完饭就胀，晚上也睡不好（男，40岁）" * 2), ("Doctor", "多久了？饮食规律吗？" * 4),
            ("Patients", "两个月了，吃饭不规律。"), ("Doctor", "建议清淡饮食，按时吃饭。")]
    blocks = [_txt(talk).replace("dialog 0", f"dialog {n}") + "\n" for n in range(5200)]
    path = tmp_path / "train.txt"
    before = _big_gbk(path, blocks, 5000)
    items = read(MedDG, path)
    assert_well_formed(items)
    *dialogues, cut, whole = items
    assert whole.reason == "ingest.unreadable_file" and whole.location.startswith(f"{path} after line ")
    assert cut.reason == "ingest.unreadable_file" and "may be cut off" in cut.detail
    assert 0 < len(dialogues) < before and all(i.reason == "" for i in dialogues)
    assert dialogues[0].dialogue.gender == "male"


def test_meddialog_gbk_file_breaking_off_is_reported(tmp_path):
    block = "id={n}\nhttp://x/{n}\n\nDescription\n病情描述：\n咳嗽三天了，嗓子疼，晚上咳得睡不着。\n\nDialogue\n病人：\n" \
            "咳嗽三天了，嗓子疼，晚上咳得睡不着。\n医生：\n有没有发烧？多喝水，注意休息，必要时来医院看看。\n\n"
    blocks = [block.format(n=n) for n in range(9000)]
    path = tmp_path / "2012.txt"
    before = _big_gbk(path, blocks, 8500)
    items = read(MedDialog, path)
    assert_well_formed(items)
    *dialogues, cut, whole = items
    assert whole.reason == "ingest.unreadable_file" and cut.reason == "ingest.unreadable_file"
    assert 0 < len(dialogues) < before and all(i.reason == "" for i in dialogues)


def test_meddialog_undecodable_line_holds_its_block_back(tmp_path):
    path = tmp_path / "2013.txt"
    good = "id=1\nhttp://x/1\n\nDialogue\n病人：\n一直咳嗽。\n医生：\n多喝水。\n\n".encode()
    path.write_bytes(good + "id=2\nhttp://x/2\n\nDialogue\n病人：\n".encode() + b"\xff\xfe\n" + "医生：\n多喝水。\n".encode())
    items = read(MedDialog, path)
    assert [i.reason for i in items] == ["", "ingest.bad_encoding"]  # not "not_selected": its text is unknown
    assert "line 15 cannot be decoded" in items[1].detail
