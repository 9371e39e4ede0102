"""normalize_for_speech against the real wetext grammar (no mocks): every expected string
below was reviewed as the correct Mandarin reading, not copied from the output."""

import re

import pytest

from actors.speech_text import NORMALIZER_VERSION, normalize_for_speech

CASES = [
    # Blood pressure and the lab units wetext half-reads.
    ("血压140/90mmHg", "血压一百四十比九十毫米汞柱"),
    ("血压：140/90", "血压：一百四十比九十"),
    ("收缩压140mmHg", "收缩压一百四十毫米汞柱"),
    ("空腹血糖7.0mmol/L", "空腹血糖七点零毫摩尔每升"),
    ("肌酐90μmol/L", "肌酐九十微摩尔每升"),
    ("肌酐90umol/L", "肌酐九十微摩尔每升"),
    ("白蛋白35g/L", "白蛋白三十五克每升"),
    ("静滴500mL", "静滴五百毫升"),
    ("注射10 mL", "注射十毫升"),
    ("心率120次/分", "心率一百二十次每分"),
    ("每次100mg/次", "每次一百毫克每次"),
    ("10mg/kg", "十毫克每千克"),
    ("白细胞5.6×10^9/L", "白细胞五点六乘十的九次方每升"),
    ("白细胞5.6×10⁹/L", "白细胞五点六乘十的九次方每升"),
    # Ranges read 到, never 减; a % on the right belongs to both ends.
    ("每日2-3次", "每日二到三次"),
    ("2～3天", "二到三天"),
    ("2.5-3.5mg", "二点五到三点五毫克"),
    ("10-20%", "百分之十到百分之二十"),
    # Ordinals, 两 before count words, bare integers, phone numbers.
    ("第2天", "第二天"),
    ("第12天", "第十二天"),
    ("每天3次，每次2片", "每天三次，每次两片"),
    ("每日2次", "每日两次"),
    ("2型糖尿病", "二型糖尿病"),
    ("2号床", "二号床"),
    ("心率120", "心率一百二十"),
    ("120", "一百二十"),
    ("共120人，", "共一百二十人，"),
    ("10005", "一万零五"),
    ("100100", "十万零一百"),
    ("1,000", "一千"),
    ("电话13800138000", "电话幺三八零零幺三八零零零"),
    # Letter-digit terms: Latin letters kept, digits in Chinese.
    ("HbA1c 7.5%", "HbA一c 百分之七点五"),
    ("SpO2 95%", "SpO二 百分之九十五"),
    ("维生素B12", "维生素B十二"),
    ("CA125", "CA一二五"),
    ("H1N1", "H一N一"),
    ("pH7.4", "pH七点四"),
    ("做CT检查", "做CT检查"),
    ("B超提示", "B超提示"),
    ("B超2次", "B超两次"),
    # What wetext already does right still comes through.
    ("38.5℃", "三十八点五摄氏度"),
    ("体温-1℃", "体温负一摄氏度"),
    ("血氧饱和度95%", "血氧饱和度百分之九十五"),
    ("0.5", "零点五"),
    ("1/2", "二分之一"),
    ("2023年5月1日", "二零二三年五月一日"),
    ("2023-05-01", "二零二三年五月一日"),
    ("下午3:30", "下午三点三十分"),
    ("下午2点", "下午两点"),
    ("空腹血糖≥7.0mmol/L", "空腹血糖大于等于七点零毫摩尔每升"),
    ("<5", "小于五"),
    # Markdown TTS cannot speak.
    ("**注意**：多喝水", "注意：多喝水"),
    ("# 标题", "标题"),
    ("- 多喝水", "多喝水"),
    ("* 多喝水", "多喝水"),
    ("1. 多喝水", "一、多喝水"),
    ("***", ""),
    ("[指南](https://example.org)", "指南"),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0] for c in CASES])
def test_cases(text: str, expected: str) -> None:
    assert normalize_for_speech(text) == expected


@pytest.mark.parametrize("expected", [e for _, e in CASES if e], ids=[c[0] for c in CASES if c[1]])
def test_idempotent_on_normalised_output(expected: str) -> None:
    assert normalize_for_speech(expected) == expected


def test_empty_string() -> None:
    assert normalize_for_speech("") == ""


@pytest.mark.parametrize("text", ["建议您多喝水，注意休息。", "医生：您好！请问哪里不舒服？\n患者：头疼。"])
def test_plain_chinese_unchanged(text: str) -> None:
    assert normalize_for_speech(text) == text


@pytest.mark.parametrize("text", [" ", "\n\n", "😀", "%%%", "/-/", "１２０", "\u200b", "x" * 500])
def test_odd_input_never_raises(text: str) -> None:
    assert isinstance(normalize_for_speech(text), str)


PARAGRAPH = """## 复诊记录
- **血压**：140/90mmHg，心率120次/分，体温38.5℃。
- 空腹血糖7.0mmol/L，HbA1c 7.5%，肌酐90μmol/L，白蛋白35g/L，SpO2 95%。
1. 第2天复查B超和CT，2023年5月1日下午3:30就诊。
2. 阿司匹林100mg，每日1次；生理盐水500mL静滴，2-3天后复查，咨询电话13800138000。"""

PARAGRAPH_SPOKEN = """复诊记录
血压：一百四十比九十毫米汞柱，心率一百二十次每分，体温三十八点五摄氏度。
空腹血糖七点零毫摩尔每升，HbA一c 百分之七点五，肌酐九十微摩尔每升，白蛋白三十五克每升，SpO二 百分之九十五。
一、第二天复查B超和CT，二零二三年五月一日下午三点三十分就诊。
二、阿司匹林一百毫克，每日一次；生理盐水五百毫升静滴，二到三天后复查，咨询电话幺三八零零幺三八零零零。"""


def test_mixed_paragraph() -> None:
    spoken = normalize_for_speech(PARAGRAPH)
    assert spoken == PARAGRAPH_SPOKEN
    assert not re.search(r"[0-9#*]", spoken)
    assert normalize_for_speech(spoken) == spoken


def test_version_is_a_nonempty_string() -> None:
    assert isinstance(NORMALIZER_VERSION, str) and NORMALIZER_VERSION
