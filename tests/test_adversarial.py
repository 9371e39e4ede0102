"""Adversarial inputs for every loader and stage: each gives a clear error (naming the file,
line or record and what to do) or a quarantined row with a reason code, never a traceback,
a hang or a silent drop.

Table-driven. `CORPORA` writes one record, whose patient says a given text, in each source
format's on-disk layout; `FILE_CASES` damage that file (empty, blank, binary, UTF-16 with and
without a byte-order mark, a 1 MB turn) and `EXPECTED` says what `SourceFormat.items` (the
stream ingestion reads) must give for each format. Links leaving a source folder, link loops
and dangling links go through every format too. Then: ShareGPT roles, overlong lines, the
planner over a folder of adversarial records, the text stages (the longest turn ingest
lets through; turns with nothing to say), and `AUDIO_CASES` (zero-length, corrupt, cut-off
FLAC and WAV, NaN, infinite, 10-minute, stereo 44.1 kHz, 8 kHz, a link out of the folder) through every audio
loader: cough clips, noise clips, the doctor's reference clip, the voice-pool builder and the
training reader; a TTS engine emitting NaN; names that would leave the run directory.

Test double: `NaNEngine` wraps the real espeak engine and corrupts its output with NaN, as a
GPU engine in half precision can; it stands in for that GPU engine, which cannot run here.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import opencc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile

from actors.audio import RATE, BadAudio, flac_bytes, load_audio
from actors.registry import build_stage
from actors.sources import SOURCE_FORMATS, SourceItem, SourceRef
from actors.sources import common
from actors.synthesize import MAX_COUGH_S, MAX_NOISE_S, check_clip, load_clips
from actors.worker import check_reconciles
from pipeline.config import ConfigError, parse_config
from pipeline.plan import INGEST, plan_ingest
from pipeline.voices import EXCLUDED, VOICES, build_pool
from schemas import SourceDialogue, Turn, VoiceChoice
from storage.rundir import RunDir

TEXT = "医生您好，我咳嗽两周了，晚上睡不着。"  # every format's patient text (MedDialog keeps coughs only)
HUGE = "我咳嗽得厉害，晚上睡不着。" * 80_000  # a 1,040,000-character turn, 3 MB of UTF-8
OUTSIDE_MARK = "门外的秘密咳嗽记录"  # text only a file outside the source folder holds


# == source formats ==============================================================================

def _sharegpt(text: str) -> str:
    return json.dumps([{"id": "a", "conversations": [{"from": "human", "value": text},
                                                     {"from": "gpt", "value": "建议多休息，必要时就医。"}]}],
                      ensure_ascii=False)


def _cmb(text: str) -> str:
    return json.dumps([{"exam_type": "医师考试", "exam_class": "执业医师", "exam_subject": "内科", "question": text,
                        "answer": "A", "question_type": "单项选择题", "option": {"A": "甲选项", "B": "乙选项"}}],
                      ensure_ascii=False)


def _csv(header: list[str], row: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerow(row)
    return out.getvalue()


def _cmexam(text: str) -> str:
    return _csv(["Question", "Options", "Answer", "Explanation"], [text, "A 甲选项\nB 乙选项", "A", ""])


def _cmtmedqa(text: str) -> str:
    return json.dumps([{"id": "k1", "cate1": "内科", "cate2": "呼吸内科", "instruction": text, "input": "",
                        "output": "建议先拍个胸片。", "history": []}], ensure_ascii=False)


def _meddg(text: str) -> str:
    lines = [json.dumps({"id": role, "Sentence": said}, ensure_ascii=False)
             for role, said in (("Patients", text), ("Doctor", "建议清淡饮食。"))]
    return "dialog 0\n" + "\n".join(lines) + "\n"


def _meddialog(text: str) -> str:
    return (f"id=1\nhttps://www.haodf.com/wenda/x.htm\n\nDoctor faculty\n呼吸内科\n\nDescription\n疾病：\n咳嗽\n"
            f"病情描述：\n{text}\n\nDialogue\n病人：\n{text}\n医生：\n建议多喝水。\n")


def _medsafety(text: str) -> str:
    return _csv(["", "harmful_medical_request", "safe_response"], ["0", text, "I can't help with that."])


@dataclass(frozen=True)
class Corpus:
    rel: str  # where the format's reader finds the file under the source folder
    write: Callable[[str], str]  # the file's text, holding one record whose patient says the argument
    options: dict = field(default_factory=dict)


CORPORA = {
    "sharegpt": Corpus("data/consultations.json", _sharegpt),
    "huatuo_sft": Corpus("HuatuoGPT2-GPT4-SFT-140K.json", _sharegpt),
    "huatuo_pretrain": Corpus("data/HuatuoGPT2_Pretrain_Meidcal_Encyclopedia_cn.json", _sharegpt,
                              {"corpora": ["Encyclopedia"]}),
    "cmb_exam": Corpus("CMB-train/CMB-train-merge.json", _cmb),
    "cmexam": Corpus("data/train.csv", _cmexam),
    "cmtmedqa": Corpus("CMtMedQA.json", _cmtmedqa),
    "meddg": Corpus("train.txt", _meddg, {"splits": ["train"]}),
    "meddialog": Corpus("2020.txt", _meddialog),
    "medsafety": Corpus("train/gpt4/med_safety_demonstrations_category_1.csv", _medsafety),
}
assert set(CORPORA) == set(SOURCE_FORMATS), "every source format is in the table"


def items(fmt: str, path: Path) -> list[SourceItem]:
    cls = SOURCE_FORMATS[fmt]
    ref = SourceRef("src", str(path), cls.default_treatment, cls.Options(**CORPORA[fmt].options))
    return list(cls().items(ref))


def place(root: Path, fmt: str, data: bytes) -> Path:
    path = root / CORPORA[fmt].rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def assert_clear(item: SourceItem, names: Path | str) -> None:
    """A quarantined item: a reason code, its location first in the detail, the file or folder named."""
    assert item.dialogue is None and item.reason.startswith("ingest."), item
    assert item.detail.startswith(f"{item.location}: ") and str(names) in item.detail, item.detail


def patient_texts(found: list[SourceItem]) -> list[str]:
    return [i.dialogue.turns[0].text for i in found if i.dialogue is not None]


FILE_CASES: dict[str, Callable[[Corpus], bytes]] = {
    "empty": lambda c: b"",
    "blank": lambda c: b"\n  \n\t\n",
    "binary": lambda c: bytes(range(256)) * 4,
    "utf16_bom": lambda c: c.write(TEXT).encode("utf-16"),
    "utf32_bom": lambda c: c.write(TEXT).encode("utf-32"),
    "utf16_no_bom": lambda c: c.write(TEXT).encode("utf-16-le"),
    "gigantic_turn": lambda c: c.write(HUGE).encode(),
}
_JSON = ("sharegpt", "huatuo_sft", "huatuo_pretrain", "cmb_exam", "cmtmedqa")
_CSV = ("cmexam", "medsafety")
_TXT = ("meddg", "meddialog")
# The reasons each damaged file gives, by format (None: read like its UTF-8 original).
EXPECTED: dict[str, dict[str, set[str] | None]] = {
    "empty": {f: {"ingest.empty_file"} for f in CORPORA},
    "blank": {**{f: {"ingest.empty_file"} for f in _JSON + _TXT}, **{f: {"ingest.bad_header"} for f in _CSV}},
    "binary": {**{f: {"ingest.malformed", "ingest.bad_encoding"} for f in _JSON},
               **{f: {"ingest.bad_header"} for f in _CSV}, **{f: {"ingest.unsupported_file"} for f in _TXT}},
    "utf16_bom": {f: None for f in CORPORA},
    "utf32_bom": {f: None for f in CORPORA},
    "utf16_no_bom": {**{f: {"ingest.unreadable_file"} for f in _JSON}, **{f: {"ingest.bad_header"} for f in _CSV},
                     **{f: {"ingest.unsupported_file"} for f in _TXT}},
    "gigantic_turn": {f: {"ingest.turn_too_long"} for f in CORPORA},
}


@pytest.mark.parametrize("fmt", sorted(CORPORA))
def test_each_layout_reads_its_record(tmp_path: Path, fmt: str) -> None:
    """The table's own check: the undamaged file gives exactly its one dialogue."""
    place(tmp_path / "corpus", fmt, CORPORA[fmt].write(TEXT).encode())
    found = items(fmt, tmp_path / "corpus")
    assert [i.reason for i in found] == [""] and TEXT in patient_texts(found)[0]


@pytest.mark.parametrize("fmt", sorted(CORPORA))
@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_damaged_files_are_quarantined_with_a_reason(tmp_path: Path, fmt: str, case: str) -> None:
    root = tmp_path / "corpus"
    path = place(root, fmt, FILE_CASES[case](CORPORA[fmt]))
    started = time.perf_counter()
    found = items(fmt, root)
    assert time.perf_counter() - started < 30
    expected = EXPECTED[case][fmt]
    if expected is None:
        assert [i.reason for i in found] == [""] and TEXT in patient_texts(found)[0]
        return
    assert found and {i.reason for i in found} == expected
    for item in found:
        assert_clear(item, path)
    if case == "gigantic_turn":
        (item,) = found
        assert "characters, over the 10,000 a spoken turn may have (MAX_TURN_CHARS)" in item.detail
        assert len(item.raw) <= 100_000  # the quarantined copy is bounded too


def traditional(text: str) -> str:
    return opencc.OpenCC("s2tw").convert(text)


# CMB's exam-type filter and MedDialog's speaker labels are Simplified words, which a
# converted file no longer has.
@pytest.mark.parametrize("fmt", sorted(set(CORPORA) - {"cmb_exam", "meddialog"}))
def test_a_big5_file_is_read_as_big5_not_as_gbk(tmp_path: Path, fmt: str) -> None:
    """Big5 bytes also decode as GB18030, into rare characters: the sniffer must tell them apart."""
    place(tmp_path / "corpus", fmt, traditional(CORPORA[fmt].write(TEXT)).encode("big5"))
    found = items(fmt, tmp_path / "corpus")
    assert [i.reason for i in found] == [""] and traditional(TEXT) in patient_texts(found)[0]


def test_gbk_text_with_traditional_characters_stays_gbk(tmp_path: Path) -> None:
    place(tmp_path / "corpus", "sharegpt", CORPORA["sharegpt"].write(traditional(TEXT)).encode("gbk"))
    assert traditional(TEXT) in patient_texts(items("sharegpt", tmp_path / "corpus"))[0]


# Formats that read every matching file of a folder: an empty file beside a good one.
EMPTY_SIBLINGS = {"sharegpt": "data/more.jsonl", "cmb_exam": "CMB-val/CMB-val-merge.json", "cmexam": "data/dev.csv",
                  "meddialog": "2021.txt", "medsafety": "train/gpt4/med_safety_demonstrations_category_2.csv"}


@pytest.mark.parametrize("fmt", sorted(EMPTY_SIBLINGS))
def test_an_empty_file_beside_good_ones_is_reported_by_name(tmp_path: Path, fmt: str) -> None:
    root = tmp_path / "corpus"
    place(root, fmt, CORPORA[fmt].write(TEXT).encode())
    empty = root / EMPTY_SIBLINGS[fmt]
    empty.parent.mkdir(parents=True, exist_ok=True)
    empty.write_bytes(b"")
    found = items(fmt, root)
    assert sorted(i.reason for i in found) == ["", "ingest.empty_file"] and TEXT in patient_texts(found)[0]
    (item,) = [i for i in found if i.reason]
    assert item.location == str(empty)
    assert_clear(item, empty)


@pytest.mark.parametrize("fmt", sorted(CORPORA))
def test_a_link_out_of_the_source_folder_is_reported_and_not_read(tmp_path: Path, fmt: str) -> None:
    outside = place(tmp_path / "elsewhere", fmt, CORPORA[fmt].write(OUTSIDE_MARK + TEXT).encode())
    root = tmp_path / "corpus"
    link = root / CORPORA[fmt].rel
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    found = items(fmt, root)
    assert patient_texts(found) == []
    (escaped,) = [i for i in found if i.reason == "ingest.outside_root"]
    assert_clear(escaped, link)
    assert f"a symbolic link to {outside}, outside the source folder" in escaped.detail
    assert all(OUTSIDE_MARK not in i.raw + i.detail for i in found), "nothing of the outside file is read"
    # Named as the source path itself, the same file is the user's choice and is read.
    assert OUTSIDE_MARK in patient_texts(items(fmt, link))[0]


@pytest.mark.parametrize("fmt", sorted(CORPORA))
def test_link_loops_end_and_dangling_links_are_reported(tmp_path: Path, fmt: str) -> None:
    root = tmp_path / "corpus"
    place(root, fmt, CORPORA[fmt].write(TEXT).encode())
    (root / "loop").symlink_to(root)  # pyarrow's recursive listing followed this forever
    (root / "up").symlink_to(tmp_path)  # out, to a folder holding the corpus itself
    dangling = root / ("gone" + Path(CORPORA[fmt].rel).suffix)
    dangling.symlink_to(tmp_path / "no-such-file")
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(found=items(fmt, root)), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert "found" in outcome, "reading a folder with a link loop did not end"
    found = outcome["found"]
    assert [TEXT in text for text in patient_texts(found)] == [True]  # read once, not once per loop
    reasons = Counter(i.reason for i in found if i.reason)
    assert reasons == {"ingest.broken_link": 1, "ingest.outside_root": 1}
    assert_clear(next(i for i in found if i.reason == "ingest.broken_link"), dangling)
    assert_clear(next(i for i in found if i.reason == "ingest.outside_root"), root / "up")


# == roles ===================================================================================

def _conv(*turns: tuple[object, str]) -> list[dict]:
    return [{"from": role, "value": text} if role is not ... else {"value": text} for role, text in turns]


ROLE_CASES = [  # (name, conversations, reason, fragment); test_sources.py covers system turns,
    # a doctor opening, two doctors in a row and empty turns.
    ("two_patients_in_a_row", _conv(("human", "我头疼"), ("human", "还发烧"), ("gpt", "量一下体温")),
     "ingest.roles_not_alternating", "turns 0 and 1 are both patient"),
    ("unknown_role", _conv(("human", "我头疼"), ("nurse", "请稍等"), ("gpt", "休息")), "ingest.bad_role",
     "turn 1 has role 'nurse'"),
    ("missing_from", _conv((..., "我头疼"), ("gpt", "休息")), "ingest.bad_role", "turn 0 has role ''"),
    ("null_from", _conv((None, "我头疼"), ("gpt", "休息")), "ingest.bad_role", "turn 0 has role None"),
    ("numeric_from", _conv((1, "我头疼"), ("gpt", "休息")), "ingest.bad_role", "turn 0 has role 1"),
    ("patient_only", _conv(("human", "我头疼得厉害，怎么办？")), "ingest.no_doctor_turn", "no doctor reply"),
    ("doctor_only", _conv(("gpt", "多喝热水。")), "ingest.bad_role", "first turn must be the patient's"),
]


@pytest.mark.parametrize("conversations, reason, fragment", [c[1:] for c in ROLE_CASES], ids=[c[0] for c in ROLE_CASES])
def test_mixed_or_missing_roles_are_quarantined(tmp_path: Path, conversations: list, reason: str,
                                                fragment: str) -> None:
    path = tmp_path / "in.jsonl"
    good = {"id": "ok", "conversations": _conv(("human", TEXT), ("gpt", "建议就医。"))}
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [{"id": "x", "conversations": conversations},
                                                                          good]) + "\n", encoding="utf-8")
    bad, ok = items("sharegpt", path)
    assert ok.reason == "" and bad.reason == reason and fragment in bad.detail
    assert_clear(bad, f"{path} line 1")


def test_record_keys_that_look_like_paths_never_become_paths(tmp_path: Path) -> None:
    """Ids (and so export file names, `audio/<id>-<turn>.flac`) hash the source's key."""
    path = tmp_path / "in.json"
    key = "../../../etc/passwd"
    path.write_text(json.dumps([{"id": key, "conversations": _conv(("human", TEXT), ("gpt", "好的。"))}]), encoding="utf-8")
    (item,) = items("sharegpt", path)
    assert item.dialogue.source_key == key and "/" not in item.dialogue.id and ".." not in item.dialogue.id


def test_chinese_role_names_read_like_english(tmp_path: Path) -> None:
    path = tmp_path / "in.json"
    path.write_text(json.dumps([{"id": "z", "conversations": _conv(("患者", TEXT), ("医生", "建议就医。"))}],
                               ensure_ascii=False), encoding="utf-8")
    (item,) = items("sharegpt", path)
    assert [t.role for t in item.dialogue.turns] == ["patient", "doctor"]


# == overlong lines ============================================================================

def items_and_peak_memory(fmt: str, path: Path) -> tuple[list[SourceItem], int]:
    """What the format reads from `path`, and the peak of Python's memory while it reads."""
    import tracemalloc

    tracemalloc.start()
    try:
        found = items(fmt, path)
        return found, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_line_over_the_limit_is_skipped_not_held(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    record = {"id": "a", "conversations": _conv(("human", TEXT), ("gpt", "建议就医。"))}
    line = json.dumps(record, ensure_ascii=False)
    with path.open("w", encoding="utf-8") as f:
        f.write(line + "\n" + "x" * (common.MAX_LINE_BYTES + (3 << 20)) + "\n" + line.replace('"a"', '"b"') + "\n")
    found = items("sharegpt", path)
    assert [i.reason for i in found] == ["", "ingest.line_too_long", ""]
    assert_clear(found[1], f"{path} line 2")
    assert found[2].dialogue.source_key == "b" and len(found[1].raw) <= 2000


def test_an_overlong_line_is_never_held_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 40 MiB line under a 1 MiB limit: the reader's peak memory stays near the limit."""
    monkeypatch.setattr(common, "MAX_LINE_BYTES", 1 << 20)
    path = tmp_path / "in.jsonl"
    good = json.dumps({"id": "a", "conversations": _conv(("human", TEXT), ("gpt", "建议就医。"))}, ensure_ascii=False)
    with path.open("w", encoding="utf-8") as f:
        f.write(good + "\n")
        for _ in range(40):
            f.write("x" * (1 << 20))
        f.write("\n" + good.replace('"a"', '"b"') + "\n")
    found, peak = items_and_peak_memory("sharegpt", path)
    assert [i.reason for i in found] == ["", "ingest.line_too_long", ""]
    assert peak < 8 << 20, f"peak {peak >> 20} MiB"


def test_a_gigantic_json_string_is_never_held_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 40 MiB string in a JSON array under a 1 MiB limit: the file is reported from that
    record on (the parser cannot resume inside it), the records before are kept, and the
    parser never builds the string."""
    monkeypatch.setattr(common, "MAX_LINE_BYTES", 1 << 20)
    path = tmp_path / "in.json"
    good = json.dumps({"id": "a", "conversations": _conv(("human", TEXT), ("gpt", "建议就医。"))}, ensure_ascii=False)
    with path.open("w", encoding="utf-8") as f:
        f.write(f'[{good}, {{"id": "b", "conversations": [{{"from": "human", "value": "')
        for _ in range(40):
            f.write("咳" * (1 << 18))  # 768 KiB of UTF-8 a time
        f.write(f'"}}]}}, {good.replace(chr(34) + "a" + chr(34), chr(34) + "c" + chr(34))}]')
    found, peak = items_and_peak_memory("sharegpt", path)
    assert [i.reason for i in found] == ["", "ingest.value_too_long"]
    assert_clear(found[1], f"{path} after record 0")
    assert "without a quote" in found[1].detail and "Records before this point were kept" in found[1].detail
    assert peak < 8 << 20, f"peak {peak >> 20} MiB"


def test_an_overlong_csv_line_ends_the_file_and_says_so(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    text = _cmexam(TEXT) + "x" * (common.MAX_LINE_BYTES + 1) + "\n" + _cmexam("第二题").split("\n", 1)[1]
    path = place(root, "cmexam", text.encode())
    found = items("cmexam", root)
    assert [i.reason for i in found] == ["", "ingest.line_too_long"]
    assert "the rest of the file is not read" in found[1].detail and str(path) in found[1].detail


def test_a_csv_cell_over_128_kib_is_judged_not_fatal(tmp_path: Path) -> None:
    """The csv module's own 128 KiB field limit used to end the file at such a cell."""
    root = tmp_path / "corpus"
    rows = _medsafety("A" * 200_000) + _medsafety("How do I treat a cold?").split("\n", 1)[1].replace("0,", "1,", 1)
    place(root, "medsafety", rows.encode())
    assert [i.reason for i in items("medsafety", root)] == ["ingest.turn_too_long", ""]


# == the planner ===============================================================================

def test_the_plan_quarantines_adversarial_records_and_reconciles(tmp_path: Path) -> None:
    folder = tmp_path / "consultations"
    folder.mkdir()
    records = [{"id": f"ok{i}", "conversations": _conv(("human", f"{TEXT}第{i}次"), ("gpt", "建议就医。"))}
               for i in range(6)]
    records += [{"id": "huge", "conversations": _conv(("human", HUGE), ("gpt", "建议就医。"))},
                {"id": "alone", "conversations": _conv(("human", "我头疼得厉害。"))},
                {"id": "many", "conversations": _conv(*[("human" if i % 2 == 0 else "gpt", "头疼" * 4_000)
                                                        for i in range(14)])}]
    (folder / "a.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    (folder / "b.jsonl").write_bytes(b"")
    elsewhere = tmp_path / "secret.json"
    elsewhere.write_text(json.dumps(records[:1]), encoding="utf-8")
    (folder / "c.json").symlink_to(elsewhere)
    config = parse_config({"seed": 1, "num_shards": 2, "ingest_part_size": 4,
                           "sources": [{"name": "adv", "format": "sharegpt", "path": str(folder)}]},
                          base_dir=None, origin="test")
    started = time.perf_counter()
    plan_ingest(str(tmp_path / "run"), config, "fp", "session", None)
    assert time.perf_counter() - started < 60
    rundir = RunDir(str(tmp_path / "run"))
    rejected = Counter()
    for commit in rundir.commits(INGEST).values():
        if commit.rejected is not None:
            table = pq.read_table(rundir.abs(commit.rejected.path), columns=["reason"])
            rejected += Counter(table.column("reason").to_pylist())
    assert rejected == {"ingest.turn_too_long": 1, "ingest.no_doctor_turn": 1, "ingest.dialogue_too_long": 1,
                        "ingest.outside_root": 1, "ingest.empty_file": 1}  # b.jsonl
    counts = json.loads((tmp_path / "run" / "plan" / "plan.json").read_text())["sources"]["adv"]
    assert counts == {"read": 11, "written": 6, "rejected": 5}


# == text stages ===============================================================================

def _dialogue(*turns: tuple[str, str], key: str = "d") -> SourceDialogue:
    return SourceDialogue(id=key, source="s", source_key=key, treatment="consultation",
                          turns=[Turn(role=role, text=text) for role, text in turns])


def test_text_stages_take_the_longest_turn_ingest_lets_through_in_bounded_time() -> None:
    longest = ("我头疼了3天，晚上睡不好，体温38.5℃。" * 1_000)[: common.MAX_TURN_CHARS]
    batch = [_dialogue(("patient", longest), ("doctor", longest))]
    for kind in ("prefilter", "normalize"):
        stage = build_stage(kind, kind, {}, 1)
        stage.setup()
        started = time.perf_counter()
        result = stage.process(batch)
        assert time.perf_counter() - started < 30, kind
        check_reconciles(stage, batch, result)
        assert len(result.accepted) == 1, (kind, result.rejected)


SILENT_TURNS = ["？？？", "😀😀", "\x00\x07", "<cough>", "……——"]


@pytest.mark.parametrize("text", SILENT_TURNS)
def test_normalize_rejects_a_turn_with_nothing_to_say(text: str) -> None:
    stage = build_stage("normalize", "normalize", {}, 1)
    batch = [_dialogue(("patient", TEXT), ("doctor", text), key="bad"), _dialogue(("patient", TEXT), ("doctor", "好的。"))]
    result = stage.process(batch)
    check_reconciles(stage, batch, result)
    (rejection,) = result.rejected
    assert rejection.id == "bad" and rejection.reason == "normalize.empty_speech_text"
    assert "turn 1 has nothing to say" in rejection.detail


# == audio =====================================================================================

def _tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def _wav(samples: np.ndarray, rate: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    out = io.BytesIO()
    soundfile.write(out, samples, rate, format=fmt, subtype=subtype)
    return out.getvalue()


def _with(value: float) -> bytes:
    samples = _tone(1.0, RATE)
    samples[4000:4010] = value
    return _wav(samples, RATE, "FLOAT")


def _truncated(fmt: str) -> bytes:
    data = _wav(_tone(2.0, RATE), RATE, fmt=fmt)
    return data[: len(data) // 2]


AUDIO_CASES: dict[str, Callable[[], bytes]] = {
    "zero_length": lambda: _wav(np.zeros(0, np.float32), RATE),
    "corrupt": lambda: b"RIFF\x00\x00\x00\x00WAVEfmt garbage" + bytes(range(256)),
    "truncated_flac": lambda: _truncated("FLAC"),
    "truncated_wav": lambda: _truncated("WAV"),  # libsndfile reads the half that is there, quietly
    "nan": lambda: _with(np.nan),
    "infinite": lambda: _with(np.inf),
    "ten_minutes": lambda: _wav(np.tile(_tone(1.0, RATE), 600), RATE),
    "stereo_44k": lambda: _wav(np.stack([_tone(2.0, 44_100)] * 2, axis=1), 44_100),
    "mono_8k": lambda: _wav(_tone(2.0, 8_000), 8_000),
    "link_out": lambda: _wav(_tone(1.0, RATE), RATE),  # written outside, linked in
}
OK = "ok"
# What each loader makes of each case: OK, or the reason code it must name.
AUDIO_EXPECTED: dict[str, dict[str, str]] = {
    "cough": {"zero_length": "empty_audio", "corrupt": "unreadable_audio", "truncated_flac": "unreadable_audio",
              "truncated_wav": "unreadable_audio",
              "nan": "non_finite", "infinite": "non_finite", "ten_minutes": "too_long", "stereo_44k": OK,
              "mono_8k": OK, "link_out": "outside"},
    "noise": {"zero_length": "empty_audio", "corrupt": "unreadable_audio", "truncated_flac": "unreadable_audio",
              "truncated_wav": "unreadable_audio",
              "nan": "non_finite", "infinite": "non_finite", "ten_minutes": OK, "stereo_44k": OK, "mono_8k": OK,
              "link_out": "outside"},
    # A path named in the config is the user's choice: a link there is followed.
    "doctor_voice": {"zero_length": "empty_audio", "corrupt": "unreadable_audio", "truncated_flac": "unreadable_audio",
                     "truncated_wav": "unreadable_audio",
                     "nan": "non_finite", "infinite": "non_finite", "ten_minutes": "too_long", "stereo_44k": OK,
                     "mono_8k": OK, "link_out": OK},
    # The pool reads headers and each clip's last frame (`audio.truncation`); float
    # recordings are read whole for NaN.
    "pool": {"zero_length": "voices.empty_audio", "corrupt": "voices.unreadable_clip",
             "truncated_flac": "voices.unreadable_clip", "truncated_wav": "voices.unreadable_clip",
             "nan": "voices.non_finite", "infinite": "voices.non_finite", "ten_minutes": "voices.too_long",
             "stereo_44k": OK, "mono_8k": OK, "link_out": "voices.outside_root"},
    "training": {"zero_length": "empty_audio", "corrupt": "unreadable_audio", "truncated_flac": "unreadable_audio",
                 "truncated_wav": "unreadable_audio",
                 "nan": "non_finite", "infinite": "non_finite", "ten_minutes": OK, "stereo_44k": OK, "mono_8k": OK},
}
SECONDS = {"ten_minutes": 600.0, "stereo_44k": 2.0, "mono_8k": 2.0, "link_out": 1.0, "truncated_flac": 2.0}


def _write_case(folder: Path, name: str, case: str, tmp_path: Path) -> Path:
    """The case's file at folder/name; `link_out` is a link to a file outside `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    data = AUDIO_CASES[case]()
    path = folder / name
    if case == "link_out":
        target = tmp_path / "outside-clips" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        path.symlink_to(target)
    else:
        path.write_bytes(data)
    return path


def _check_loaded(samples: np.ndarray, case: str) -> None:
    assert samples.dtype == np.float32 and samples.ndim == 1 and np.isfinite(samples).all()
    assert abs(len(samples) - SECONDS[case] * RATE) <= 2  # resampled to 16 kHz mono, nothing cut


@pytest.mark.parametrize("loader, max_s", [("cough", MAX_COUGH_S), ("noise", MAX_NOISE_S)])
@pytest.mark.parametrize("case", sorted(AUDIO_CASES))
def test_clip_folders(tmp_path: Path, loader: str, max_s: float, case: str) -> None:
    folder = tmp_path / f"{loader}s"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "good.wav").write_bytes(_wav(_tone(0.5, 22_050), 22_050))
    bad = _write_case(folder / "b", f"clip.{'flac' if case == 'truncated_flac' else 'wav'}", case, tmp_path)
    expected = AUDIO_EXPECTED[loader][case]
    if expected == OK:
        clips = dict(load_clips(str(folder), f"{loader}_dir", max_s))
        assert sorted(clips) == ["a/good.wav", f"b/{bad.name}"]
        _check_loaded(clips[f"b/{bad.name}"], case)
        return
    with pytest.raises(ValueError) as error:
        load_clips(str(folder), f"{loader}_dir", max_s)
    message = str(error.value)
    assert f"b/{bad.name}" in message and expected in message and "Remove or replace them" in message
    assert "a/good.wav" not in message


def test_the_synthesize_stage_refuses_a_broken_cough_folder_when_it_loads(tmp_path: Path) -> None:
    folder = tmp_path / "coughs"
    _write_case(folder, "long-cough.wav", "ten_minutes", tmp_path)
    stage = build_stage("synthesize", "speak", {"cough_dir": str(folder)}, 1)
    with pytest.raises(ValueError, match=r"cough_dir .*long-cough.wav: 600.0 s, over the 20 s allowed here"):
        stage.setup()


@pytest.mark.parametrize("case", sorted(AUDIO_CASES))
def test_doctor_reference_clip(tmp_path: Path, case: str) -> None:
    path = _write_case(tmp_path / "clips", "doctor.wav", case, tmp_path)
    expected = AUDIO_EXPECTED["doctor_voice"][case]
    if expected == OK:
        check_clip(str(path), "doctor_voice")
        return
    with pytest.raises(ValueError) as error:
        check_clip(str(path), "doctor_voice")
    assert f"[{expected}] doctor_voice {path}" in str(error.value)


@pytest.mark.parametrize("case", sorted(AUDIO_CASES))
def test_voice_pool_clips(tmp_path: Path, case: str) -> None:
    root = tmp_path / "aishell3"
    (root / "train").mkdir(parents=True)
    (root / "spk-info.txt").write_text("SSB0001\tC\tfemale\tnorth\n", encoding="utf-8")
    (root / "train" / "content.txt").write_text(
        "SSB00010001.wav\t甚 shen4 至 zhi4\nSSB00010002.wav\t出 chu1 现 xian4\n../../etc/passwd\t文 wen2\n", encoding="utf-8")
    wav = root / "train" / "wav" / "SSB0001"
    wav.mkdir(parents=True)
    (wav / "SSB00010001.wav").write_bytes(_wav(_tone(2.0, 44_100), 44_100))
    data = AUDIO_CASES[case]()
    if case == "link_out":
        target = tmp_path / "outside.wav"
        target.write_bytes(data)
        (wav / "SSB00010002.wav").symlink_to(target)
    else:
        (wav / "SSB00010002.wav").write_bytes(data)
    pool = tmp_path / "pool"
    build_pool({"aishell3": str(root)}, str(pool))
    clips = pq.read_table(pool / VOICES).to_pylist()
    excluded = {r["id"]: r for r in pq.read_table(pool / EXCLUDED).to_pylist()}
    assert {r["clip_id"] for r in clips} >= {"aishell3:SSB00010001"}
    # An utterance id that is a path (`..`) never becomes a clip path.
    dots = [r for r in excluded.values() if r["reason"] == "voices.bad_utterance_id"]
    assert len(dots) == 1 and "../../etc/passwd" in dots[0]["detail"]
    expected = AUDIO_EXPECTED["pool"][case]
    if expected == OK:
        (clip,) = [r for r in clips if r["clip_id"] == "aishell3:SSB00010002"]
        assert clip["duration_s"] == pytest.approx(SECONDS[case], abs=0.01)
    else:
        reason = excluded["aishell3:SSB00010002"]
        assert reason["reason"] == expected and str(wav / "SSB00010002.wav") in reason["detail"]


@pytest.mark.parametrize("corpus, missing", [("aishell3", "spk-info.txt"), ("aishell2", "iOS/data/spk_info.txt")])
def test_a_voice_root_without_its_corpus_files_is_a_clear_error(tmp_path: Path, corpus: str, missing: str) -> None:
    """It used to end `speechmed voices build` in a FileNotFoundError traceback."""
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(FileNotFoundError, match=rf"{corpus} root {root}: {root / missing}.* not found"):
        build_pool({corpus: str(root)}, str(tmp_path / "pool"))
    assert not (tmp_path / "pool").exists()
    proc = subprocess.run(["speechmed", "voices", "build", f"--{corpus}", str(root), "--out", str(tmp_path / "pool")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"{root / missing}" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("case", sorted(AUDIO_EXPECTED["training"]))
def test_training_reader(case: str) -> None:
    from training.data import StageData, StageDataset

    dataset = StageDataset(StageData([], pa.chunked_array([[AUDIO_CASES[case]()]], pa.binary()), {}, {}))
    expected = AUDIO_EXPECTED["training"][case]
    if expected == OK:
        assert dataset.log_mel(0).shape == (128, 3000)  # cut or padded to Whisper's 30 s
        return
    with pytest.raises(ValueError) as error:
        dataset.log_mel(0)
    assert "speech dataset row 0" in str(error.value) and f"[{expected}]" in str(error.value)
    assert "speechmed verify" in str(error.value)


@pytest.mark.parametrize("case", ["zero_length", "corrupt", "nan", "ten_minutes"])
def test_load_audio_names_the_file_and_the_reason(case: str) -> None:
    with pytest.raises(BadAudio) as error:
        load_audio(AUDIO_CASES[case](), "clips/x.wav", max_s=30)
    assert str(error.value).startswith("clips/x.wav: ") and error.value.code == AUDIO_EXPECTED["cough"][case]


def test_flac_refuses_non_finite_samples_with_a_message() -> None:
    """libsndfile used to fail on them with a bare AssertionError."""
    with pytest.raises(ValueError, match="1 of 3 samples are NaN or infinite"):
        flac_bytes(np.array([0.1, np.nan, 0.2], dtype=np.float32))


class NaNEngine:
    """Test double for a half-precision GPU TTS engine (which cannot run here): the real
    espeak engine's audio with NaN written into its first `bad_calls` utterances."""

    def __init__(self, real, bad_calls: int):
        self.real, self.bad_calls, self.calls = real, bad_calls, 0

    def synthesize(self, text, voice, seed, dialogue=None):
        samples, rate = self.real.synthesize(text, voice, seed, dialogue)
        self.calls += 1
        if self.calls <= self.bad_calls:
            samples = samples.copy()
            samples[len(samples) // 2: len(samples) // 2 + 50] = np.nan
        return samples, rate

    def __getattr__(self, name: str):
        return getattr(self.real, name)


@pytest.mark.parametrize("bad_calls, kept", [(1, True), (10, False)])
def test_tts_output_with_nan_is_synthesised_again_or_rejected_with_the_reason(bad_calls: int, kept: bool) -> None:
    stage = build_stage("synthesize", "speak", {}, 3)
    stage.setup()
    engine = NaNEngine(stage.engines["zero_shot"][1], bad_calls)
    stage.engines = {"zero_shot": ("espeak", engine), "random_timbre": ("espeak", engine)}
    voice = VoiceChoice(engine="zero_shot", match="gender_age", seed=5, speaker_gender="female",
                        speaker_age_group="adult")
    batch = [SourceDialogue(id="d", source="s", source_key="d", treatment="consultation", voice=voice,
                            turns=[Turn(role="patient", text=TEXT, speech_text=TEXT),
                                   Turn(role="doctor", text="好的。", speech_text="好的。")])]
    result = stage.process(batch)
    check_reconciles(stage, batch, result)
    if kept:
        (turn,) = result.accepted
        assert turn.attempts == 2 and np.isfinite(soundfile.read(io.BytesIO(turn.audio.bytes))[0]).all()
    else:
        (rejection,) = result.rejected
        assert rejection.reason == "synthesize.qc_failed" and "non_finite: " in rejection.detail


# == names that would leave the run directory ===================================================

@pytest.mark.parametrize("where", ["exports", "sources"])
@pytest.mark.parametrize("name", ["..", "."])
def test_names_that_are_parent_folders_are_refused(where: str, name: str) -> None:
    """An export named `..` was written to, and on a re-export deleted, the run directory itself."""
    sample = str(Path(__file__).resolve().parents[1] / "pipeline" / "demo" / "sample_consultations.json")
    raw = {"sources": [{"name": "s", "format": "sharegpt", "path": sample}],
           "exports": [{"name": "e", "stage": "ingest"}]}
    raw[where][0]["name"] = name
    with pytest.raises(ConfigError, match=rf"{where}\[0\]\.name: '{name}' is not a usable name"):
        parse_config(raw, base_dir=None, origin="cfg.yaml")
