"""The exam adapters: CMB-Exam (JSON) and CMExam (CSV), on original fixtures in the corpora's
on-disk layout (tests/fixtures/sources/{cmb,cmexam}) and on damaged variants."""

from __future__ import annotations

import csv
import io
import json
import random
from collections import Counter
from pathlib import Path

import pydantic
import pytest

from actors.sources import cmb as cmb_module
from actors.sources import cmexam as cmexam_module
from actors.sources.cmb import CMBExam, parse_answer, quiz_key, quiz_turns
from actors.sources.cmexam import CMExam
from actors.sources.common import SourceRef
from schemas import Turn, record_id

FIXTURES = Path(__file__).parent / "fixtures" / "sources"
CMB_DIR = FIXTURES / "cmb"
CMB_TRAIN = CMB_DIR / "CMB-Exam" / "CMB-train" / "CMB-train-merge.json"
CMEXAM_DIR = FIXTURES / "cmexam"
CMEXAM_TRAIN = CMEXAM_DIR / "data" / "train.csv"

ASK_SINGLE = "医生，我这儿有一道单选题，想考考您。"
TELL_SINGLE = "请告诉我哪个选项是对的：说出它的字母和内容。"
ASK_MULTI = "医生，我这儿有一道多选题，想考考您。"
TELL_MULTI = "正确选项可能不止一个，请把每个正确选项的字母和内容都告诉我。"


def read_cmb(path, name: str = "cmb", **options) -> list:
    return list(CMBExam().read(SourceRef(name, str(path), "knowledge_qa", CMBExam.Options(**options))))


def read_cmexam(path, name: str = "cmexam") -> list:
    return list(CMExam().read(SourceRef(name, str(path), "knowledge_qa", CMExam.Options())))


def reasons(items) -> Counter:
    return Counter(i.reason or "ok" for i in items)


def pairs(item) -> list[tuple[str, str]]:
    return [(t.role, t.text) for t in item.dialogue.turns]


def cmb_item(question="以下哪项是示例题的正确选项", answer="A", **fields) -> dict:
    record = {"exam_type": "医师考试", "exam_class": "执业医师", "exam_subject": "内科", "question": question,
              "answer": answer, "question_type": "单项选择题", "option": {"A": "甲选项", "B": "乙选项", "C": "丙选项"}}
    return record | fields


def write_json(path: Path, records: list, *, lines: bool = False, encoding: str = "utf-8") -> Path:
    text = ("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n" if lines
            else json.dumps(records, ensure_ascii=False, indent=4))
    path.write_bytes(text.encode(encoding))
    return path


def assert_failure(item, reason: str, where: str, fragment: str = "") -> None:
    assert item.dialogue is None
    assert item.reason == f"ingest.{reason}", item.detail
    assert item.location == where
    assert item.detail.startswith(f"{where}: ")
    assert fragment in item.detail


# == CMB ==========================================================================================

def test_cmb_fixture_counts_by_reason():
    items = read_cmb(CMB_TRAIN)
    assert [i.location for i in items] == [f"{CMB_TRAIN} record {n}" for n in range(10)]
    assert [i.reason.removeprefix("ingest.") or "ok" for i in items] == [
        "ok", "ok", "not_selected", "not_selected", "not_selected", "no_answer", "bad_answer", "ok", "ok", "bad_answer"]
    assert reasons(items) == {"ok": 4, "ingest.not_selected": 3, "ingest.no_answer": 1, "ingest.bad_answer": 2}


def test_cmb_exact_dialogues():
    items = read_cmb(CMB_TRAIN, name="cmb-train")
    first = items[0].dialogue
    assert pairs(items[0]) == [
        ("patient", "\n".join([ASK_SINGLE, "患者，男，45岁，晨起手指关节僵硬约两小时，双腕关节对称性肿痛半年。对诊断最有帮助的检查是",
                               "A. 血尿酸", "B. 抗环瓜氨酸肽抗体", "C. 抗链球菌溶血素O", "D. 血沉", "E. 关节腔穿刺培养",
                               TELL_SINGLE])),
        ("doctor", "B. 抗环瓜氨酸肽抗体"),
    ]
    assert (first.source, first.treatment, first.category, first.subcategory) == ("cmb-train", "knowledge_qa", "医师考试", "执业医师")
    options = [("A", "血尿酸"), ("B", "抗环瓜氨酸肽抗体"), ("C", "抗链球菌溶血素O"), ("D", "血沉"), ("E", "关节腔穿刺培养")]
    assert first.source_key == quiz_key("患者，男，45岁，晨起手指关节僵硬约两小时，双腕关节对称性肿痛半年。对诊断最有帮助的检查是", options)
    assert first.source_key.startswith("sha:")
    assert first.id == record_id("cmb-train", first.source_key)
    # an empty option slot ("E": "") is not shown
    assert pairs(items[7]) == [
        ("patient", "\n".join([ASK_SINGLE, "细胞水肿最常发生的器官是", "A. 脑", "B. 肺", "C. 脾", "D. 肝", TELL_SINGLE])),
        ("doctor", "D. 肝"),
    ]
    assert (items[7].dialogue.category, items[7].dialogue.subcategory) == ("专业知识考试", "基础知识")
    # an item with an upstream id is keyed by it; answer E of five options
    eighth = items[8].dialogue
    # upstream ids restart per file, so the key carries the file's stem
    assert eighth.source_key == "CMB-train-merge:1208" and eighth.id == record_id("cmb-train", "CMB-train-merge:1208")
    assert pairs(items[8])[1] == ("doctor", "E. 在肝内合成尿素")
    assert json.loads(items[8].raw)["id"] == 1208


def test_cmb_failures_say_why_and_what_to_do():
    items = read_cmb(CMB_TRAIN)
    where = f"{CMB_TRAIN} record"
    assert_failure(items[2], "not_selected", f"{where} 2", "exam_type '药师考试' is not selected")
    assert "options.exam_types" in items[2].detail
    assert_failure(items[3], "not_selected", f"{where} 3", "'医技考试'")
    assert_failure(items[4], "not_selected", f"{where} 4", "question_type '多项选择题' is not selected")
    assert "options.question_types" in items[4].detail
    assert_failure(items[5], "no_answer", f"{where} 5", "answer is empty")
    assert_failure(items[6], "bad_answer", f"{where} 6", "'F' names F, which is not among the options (A, B, C, D, E)")
    assert_failure(items[9], "bad_answer", f"{where} 9", "单项选择题 item with answer 'AB'")
    assert json.loads(items[2].raw)["exam_type"] == "药师考试"


def test_cmb_options_select_more():
    everything = read_cmb(CMB_TRAIN, exam_types=None, question_types=None)
    assert reasons(everything) == {"ok": 7, "ingest.no_answer": 1, "ingest.bad_answer": 2}
    multi = everything[4]
    assert pairs(multi) == [
        ("patient", "\n".join([ASK_MULTI, "小儿脱水时，提示重度脱水的表现有", "A. 四肢厥冷", "B. 尿量极少或无尿", "C. 口唇稍干",
                               "D. 眼窝明显凹陷", "E. 精神稍差", TELL_MULTI])),
        ("doctor", "A. 四肢厥冷\nB. 尿量极少或无尿\nD. 眼窝明显凹陷"),
    ]
    pharmacists = read_cmb(CMB_TRAIN, exam_types=["药师考试"])
    assert [i.reason or "ok" for i in pharmacists].count("ok") == 1
    assert pairs(pharmacists[2])[1] == ("doctor", "A. 奥美拉唑")


def test_cmb_options_are_validated():
    with pytest.raises(pydantic.ValidationError):
        CMBExam.Options(exam_type=["医师考试"])  # a misspelt option is an error, not ignored
    assert CMBExam.Options().exam_types == ("医师考试", "护理考试", "专业知识考试", "医学考研")
    assert CMBExam.Options().question_types == ("单项选择题",)
    assert CMBExam.format == "cmb_exam" and CMBExam.default_treatment == "knowledge_qa"


def test_cmb_folder_reads_merge_files_and_reports_the_rest():
    folder = CMB_DIR / "CMB-Exam"
    items = read_cmb(folder)
    hierarchy = folder / "CMB-train" / "CMB-train-hierarchy.json"
    assert_failure(items[0], "not_selected", str(hierarchy), "does not match options.files ('*-merge.json')")
    assert [i.location for i in items[1:11]] == [f"{folder}/CMB-train/CMB-train-merge.json record {n}" for n in range(10)]
    val = items[11:]
    assert [i.dialogue.source_key for i in val] == ["CMB-val-merge:1", "CMB-val-merge:2"]
    assert pairs(val[0])[1] == ("doctor", "C. 6.1 mmol/L")
    assert len(items) == 13


def test_cmb_options_keep_their_order(tmp_path):
    record = cmb_item(answer="A", option={"C": "丙", "A": "甲", "E": "戊", "B": "乙"})
    (item,) = read_cmb(write_json(tmp_path / "x.json", [record]))
    assert pairs(item)[0][1].split("\n")[2:6] == ["C. 丙", "A. 甲", "E. 戊", "B. 乙"]


@pytest.mark.parametrize("variant", ["bom", "gbk"])
def test_cmb_bom_and_gbk_read_like_utf8(variant):
    path = CMB_DIR / "variants" / variant / "CMB-train-merge.json"
    if variant == "gbk":
        with pytest.raises(UnicodeDecodeError):
            path.read_bytes().decode("utf-8")
    plain, other = read_cmb(CMB_TRAIN), read_cmb(path)
    assert [i.dialogue for i in other] == [i.dialogue for i in plain]
    assert [(i.reason, i.detail.replace(str(path), "")) for i in other] == \
        [(i.reason, i.detail.replace(str(CMB_TRAIN), "")) for i in plain]


def test_cmb_truncated_array_keeps_earlier_records():
    path = CMB_DIR / "variants" / "truncated" / "CMB-train-merge.json"
    items = read_cmb(path)
    assert [i.reason for i in items[:3]] == ["", "", "ingest.not_selected"]
    assert items[0].dialogue == read_cmb(CMB_TRAIN)[0].dialogue
    (last,) = items[3:]
    assert last.reason == "ingest.unreadable_file"
    assert last.detail.startswith(f"{path} after record 2: ")


BAD_CMB = [
    ("not_an_object", ["医师考试", "题目"], "malformed", "expected an exam item object, got list"),
    ("no_question", {k: v for k, v in cmb_item().items() if k != "question"}, "malformed", "missing 'question'"),
    ("empty_question", cmb_item(question="  "), "empty_turn", "question stem is empty"),
    ("option_list", cmb_item(option=["甲", "乙"]), "malformed", "missing 'option'"),
    ("option_not_text", cmb_item(option={"A": {"x": 1}, "B": "乙"}), "malformed", "option 'A' is a dict"),
    ("answer_not_letters", cmb_item(answer="第一个"), "bad_answer", "is not option letters"),
    ("answer_of_an_empty_slot", cmb_item(answer="D", option={"A": "甲", "B": "乙", "C": "丙", "D": ""}),
     "bad_answer", "names D"),
    ("no_answer_key", {k: v for k, v in cmb_item().items() if k != "answer"}, "no_answer", "answer is empty"),
]


@pytest.mark.parametrize("lines", [False, True], ids=["array", "jsonl"])
@pytest.mark.parametrize("record, reason, fragment", [b[1:] for b in BAD_CMB], ids=[b[0] for b in BAD_CMB])
def test_cmb_unmappable_items_are_quarantined(tmp_path, lines, record, reason, fragment):
    path = write_json(tmp_path / "CMB-train-merge.json", [cmb_item("第一题"), record, cmb_item("第三题")], lines=lines)
    items = read_cmb(path)
    assert [i.reason for i in items] == ["", f"ingest.{reason}", ""]
    where = f"{path} line 2" if lines else f"{path} record 1"
    assert_failure(items[1], reason, where, fragment)
    assert json.loads(items[1].raw) == record


def test_cmb_ids_do_not_depend_on_order(tmp_path):
    records = json.loads(CMB_TRAIN.read_text(encoding="utf-8"))
    shuffled = records[:]
    random.Random(3).shuffle(shuffled)
    assert shuffled != records

    def ids(items):
        return {i.dialogue.turns[0].text: i.dialogue.id for i in items if i.dialogue}

    a = ids(read_cmb(CMB_TRAIN))
    b = ids(read_cmb(write_json(tmp_path / "CMB-train-merge.json", shuffled)))  # same file name
    assert a == b and len(a) == 4


def test_cmb_missing_path_is_reported(tmp_path):
    (item,) = read_cmb(tmp_path / "nowhere")
    assert item.reason == "ingest.no_input" and str(tmp_path / "nowhere") in item.detail


# == the shared quiz builder ======================================================================

def test_cmexam_reuses_the_cmb_quiz_builder():
    assert cmexam_module.quiz_turns is cmb_module.quiz_turns
    assert cmexam_module.quiz_key is cmb_module.quiz_key


def test_quiz_turns():
    options = [("A", "甲"), ("B", "乙"), ("C", "丙")]
    assert quiz_turns("题干", options, ["C", "A"], "  因为如此。 ") == [
        Turn(role="patient", text=f"{ASK_MULTI}\n题干\nA. 甲\nB. 乙\nC. 丙\n{TELL_MULTI}"),
        Turn(role="doctor", text="A. 甲\nC. 丙\n解析：因为如此。"),
    ]
    assert quiz_turns("题干", options, ["B"], "解析：已有前缀")[1].text == "B. 乙\n解析：已有前缀"


@pytest.mark.parametrize("value, letters", [
    ("B", ["B"]), ("abd", ["A", "B", "D"]), ("A, C", ["A", "C"]), ("A、C", ["A", "C"]), (["A", "C"], ["A", "C"]),
    ("AA", ["A"]), ("", []), (None, []), ("nan", []), (float("nan"), []), ("1", None), ("A?", None),
])
def test_parse_answer(value, letters):
    assert parse_answer(value) == letters


# == CMExam =======================================================================================

def test_cmexam_fixture_counts_and_dialogues():
    items = read_cmexam(CMEXAM_TRAIN, name="cmexam-train")
    assert reasons(items) == {"ok": 3, "ingest.no_answer": 1, "ingest.bad_answer": 1}
    assert [i.location for i in items] == [f"{CMEXAM_TRAIN} line {n}" for n in (2, 7, 12, 16, 20)]
    first = items[0].dialogue
    assert pairs(items[0]) == [
        ("patient", "\n".join([ASK_SINGLE, "足月新生儿出生后首次排胎便的时间通常在", "A. 出生后24小时内", "B. 出生后第3天",
                               "C. 出生后第5天", "D. 出生后1周", "E. 出生后2周", TELL_SINGLE])),
        ("doctor", "A. 出生后24小时内\n解析：多数足月儿在生后一天内排出墨绿色胎便。"),
    ]
    options = [("A", "出生后24小时内"), ("B", "出生后第3天"), ("C", "出生后第5天"), ("D", "出生后1周"), ("E", "出生后2周")]
    assert first.source_key == quiz_key("足月新生儿出生后首次排胎便的时间通常在", options)
    assert (first.id, first.treatment, first.category) == (record_id("cmexam-train", first.source_key), "knowledge_qa", None)
    # multi-letter answer: every letter with its text; an explanation already saying 解析 is not doubled
    assert pairs(items[1]) == [
        ("patient", "\n".join([ASK_MULTI, "下列属于急性心肌梗死典型心电图改变的有", "A. ST段弓背向上抬高", "B. T波高尖后倒置",
                               "C. 病理性Q波", "D. PR间期缩短", "E. 出现异常Q波伴ST段回落", TELL_MULTI])),
        ("doctor", "A. ST段弓背向上抬高\nC. 病理性Q波\nE. 出现异常Q波伴ST段回落\n解析：缺血、损伤、坏死三类改变依次出现。"),
    ]
    assert_failure(items[2], "no_answer", f"{CMEXAM_TRAIN} line 12", "answer is empty")
    assert pairs(items[3])[1] == ("doctor", "C. 维生素C")  # no explanation
    assert_failure(items[4], "bad_answer", f"{CMEXAM_TRAIN} line 20", "'F' names F")
    assert json.loads(items[4].raw)["Question"] == "成人心肺复苏时胸外按压的频率为每分钟"


def test_cmexam_folder_with_index_column_nan_and_chinese_headers():
    items = read_cmexam(CMEXAM_DIR)
    assert reasons(items) == {"ok": 7, "ingest.no_answer": 1, "ingest.bad_answer": 1}
    by_question = {i.dialogue.turns[0].text.split("\n")[1]: i for i in items if i.dialogue}
    # val.csv: a pandas index column in front; "nan" explanation is no explanation
    assert pairs(by_question["长期使用糖皮质激素可引起"])[1] == ("doctor", "A. 血糖升高\nB. 骨质疏松\nC. 向心性肥胖")
    # release_zh: 问题/选项/答案/解析 headers
    zh = by_question["幼儿急疹最典型的特点是"]
    assert zh.location == f"{CMEXAM_DIR}/release_zh/data/test.csv line 2"
    assert pairs(zh)[1] == ("doctor", "A. 热退疹出\n解析：高热三到五天后热退疹出。")
    assert pairs(by_question["肺结核最主要的传播途径是"])[1] == ("doctor", "B. 飞沫")


def write_csv(path: Path, header: list[str], rows: list[list[str]], encoding: str = "utf-8") -> Path:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
    path.write_bytes(buffer.getvalue().encode(encoding))
    return path


HEADER = ["Question", "Options", "Answer", "Explanation"]
GOOD_ROW = ["示例题干一", "A 甲\nB 乙\nC 丙", "B", "示例解释"]


def test_cmexam_unknown_header_fails_the_file(tmp_path):
    path = write_csv(tmp_path / "train.csv", ["题", "Choices", "Key"], [["示例", "A 甲\nB 乙", "A"]])
    (item,) = read_cmexam(path)
    assert_failure(item, "bad_header", f"{path} line 1", "no question, options, answer column")
    assert "Question, Options, Answer" in item.detail and "问题, 选项, 答案" in item.detail


BAD_CMEXAM = [
    ("bad_option_line", ["示例题干二", "A 甲\n乙没有字母", "A", ""], "malformed", "option line '乙没有字母'"),
    ("repeated_option", ["示例题干二", "A 甲\nA 乙", "A", ""], "malformed", "option A appears twice"),
    ("empty_options", ["示例题干二", " ", "A", ""], "malformed", "Options cell is empty"),
    ("empty_question", [" ", "A 甲\nB 乙", "A", ""], "empty_turn", "Question cell is empty"),
    ("nan_answer", ["示例题干二", "A 甲\nB 乙", "NaN", ""], "no_answer", "answer is empty"),
    ("answer_not_letters", ["示例题干二", "A 甲\nB 乙", "甲", ""], "bad_answer", "not option letters"),
    ("too_few_cells", ["示例题干二", "A 甲\nB 乙"], "malformed", "2 cells where the header has 4"),
]


@pytest.mark.parametrize("row, reason, fragment", [b[1:] for b in BAD_CMEXAM], ids=[b[0] for b in BAD_CMEXAM])
def test_cmexam_unmappable_rows_are_quarantined(tmp_path, row, reason, fragment):
    path = write_csv(tmp_path / "train.csv", HEADER, [GOOD_ROW, row, ["示例题干三", "A 甲\nB 乙", "A", ""]])
    items = read_cmexam(path)
    assert [i.reason for i in items] == ["", f"ingest.{reason}", ""]
    assert_failure(items[1], reason, f"{path} line 5", fragment)


def test_cmexam_options_with_other_separators(tmp_path):
    path = write_csv(tmp_path / "train.csv", HEADER, [["示例题干", "A. 甲\r\nB、乙\nc：丙\n\n", "c", ""]])
    (item,) = read_cmexam(path)
    assert pairs(item)[0][1].split("\n")[2:5] == ["A. 甲", "B. 乙", "C. 丙"]
    assert pairs(item)[1] == ("doctor", "C. 丙")


def test_cmexam_truncated_inside_a_quoted_field(tmp_path):
    path = write_csv(tmp_path / "train.csv", HEADER, [GOOD_ROW, ["示例题干二", "A 甲\nB 乙", "A", "说明"]])
    data = path.read_bytes()
    path.write_bytes(data[: data.rindex("A 甲".encode())])  # cut inside the second row's Options
    items = read_cmexam(path)
    assert items[0].reason == ""
    (last,) = items[1:]
    assert_failure(last, "unreadable_file", f"{path} line 5", "Rows before it were kept")


def test_cmexam_undecodable_row_is_quarantined_alone(tmp_path):
    path = write_csv(tmp_path / "train.csv", HEADER, [GOOD_ROW, ["示例题干二", "A 甲\nB 乙", "A", ""],
                                                     ["示例题干三", "A 甲\nB 乙", "B", ""]])
    data = path.read_bytes()
    cut = data.index("B 乙".encode(), data.index("示例题干二".encode()))
    path.write_bytes(data[:cut] + b"\xff" + data[cut:])  # inside the second row's quoted Options
    items = read_cmexam(path)
    assert [i.reason for i in items] == ["", "ingest.bad_encoding", ""]
    assert_failure(items[1], "bad_encoding", f"{path} line 5", "(at line 6)")
    assert pairs(items[2])[1] == ("doctor", "B. 乙")


def test_cmexam_gbk_reads_like_utf8(tmp_path):
    rows = list(csv.reader(io.StringIO(CMEXAM_TRAIN.read_text(encoding="utf-8"))))
    utf8 = read_cmexam(write_csv(tmp_path / "utf8.csv", rows[0], rows[1:]))
    gbk = read_cmexam(write_csv(tmp_path / "gbk.csv", rows[0], rows[1:], encoding="gbk"))
    assert [i.dialogue for i in gbk] == [i.dialogue for i in utf8]
    assert [i.reason for i in gbk] == [i.reason for i in utf8] == [i.reason for i in read_cmexam(CMEXAM_TRAIN)]


def test_cmexam_bom_file(tmp_path):
    """Spreadsheet exports of Chinese CSVs often start with a UTF-8 byte-order mark."""
    path = write_csv(tmp_path / "train.csv", ["问题", "选项", "答案"], [["示例题干", "A 甲\nB 乙", "B"]])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    (item,) = read_cmexam(path)
    assert pairs(item) == [("patient", f"{ASK_SINGLE}\n示例题干\nA. 甲\nB. 乙\n{TELL_SINGLE}"), ("doctor", "B. 乙")]


def test_cmexam_ids_do_not_depend_on_order(tmp_path):
    rows = list(csv.reader(io.StringIO(CMEXAM_TRAIN.read_text(encoding="utf-8"))))
    shuffled = rows[1:]
    random.Random(5).shuffle(shuffled)
    assert shuffled != rows[1:]

    def ids(items):
        return {i.dialogue.turns[0].text: i.dialogue.id for i in items if i.dialogue}

    a = ids(read_cmexam(CMEXAM_TRAIN))
    assert a == ids(read_cmexam(write_csv(tmp_path / "train.csv", rows[0], shuffled))) and len(a) == 3


def test_cmexam_format():
    assert CMExam.format == "cmexam" and CMExam.default_treatment == "knowledge_qa"
    (item,) = read_cmexam(CMEXAM_DIR / "missing")
    assert item.reason == "ingest.no_input"
