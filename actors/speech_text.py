"""Chinese medical text -> speakable Chinese for TTS.

A small table-driven pre-pass fixes what wetext's zh TN grammar reads wrongly (measured,
see shared/ENVIRONMENT.md): lab units, blood pressure, ranges, ordinals and bare integers.
wetext then does what it gets right: decimals, %, ℃, dates, times, fractions, mg/kg/cm.

Letter-digit terms (HbA1c, SpO2, B12, H1N1, CA19-9) keep their Latin letters, which TTS
spells out, and get their digits in Chinese: runs of 1-2 digits as a number (维生素B12 is
said "B十二"), longer runs digit by digit (CA125 -> CA一二五). Translating them to Chinese
names would duplicate the many texts that already gloss them, e.g. "HbA1c（糖化血红蛋白）".
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wetext import Normalizer

# Bump whenever the output for some input changes: it feeds pipeline fingerprints.
NORMALIZER_VERSION: str = "1"

_DIGITS = "零一二三四五六七八九"

# Units wetext leaves half-read (mmHg -> 毫米Hg, mmol/L -> 毫米ol/L, mL -> 米L ...).
# Matched case-sensitively, longest first, never inside a longer Latin word.
_UNITS: dict[str, str] = {
    "mmHg": "毫米汞柱", "cmH2O": "厘米水柱", "kPa": "千帕",
    "mmol/L": "毫摩尔每升", "μmol/L": "微摩尔每升", "µmol/L": "微摩尔每升", "umol/L": "微摩尔每升",
    "mg/dL": "毫克每分升", "mg/L": "毫克每升", "g/L": "克每升", "g/dL": "克每分升",
    "ng/mL": "纳克每毫升", "pg/mL": "皮克每毫升", "mIU/L": "毫国际单位每升",
    "IU/L": "国际单位每升", "U/L": "单位每升", "IU": "国际单位",
    "mg/kg": "毫克每千克", "mg/d": "毫克每天", "mL": "毫升", "bpm": "次每分",
    "/min": "每分钟", "/h": "每小时", "/d": "每天", "/L": "每升",
}
_UNIT_RE = re.compile(r"(?:(?<=\d)[ \t]+)?(" + "|".join(  # "10 mL" -> "10毫升": drop the gap
    ("" if unit[0] == "/" else "(?<![A-Za-z])") + re.escape(unit) + "(?![A-Za-z])"
    for unit in sorted(_UNITS, key=len, reverse=True)) + ")")

# Count words after which a lone 2 is read 两 (两次, 两片, 两毫升) rather than 二;
# anything else (二型, 二级, 二号, 二月, 第二) keeps 二.
_LIANG_BEFORE = (
    "个", "次", "天", "周", "片", "粒", "袋", "支", "瓶", "盒", "包", "贴", "针", "剂", "滴",
    "杯", "位", "名", "人", "例", "种", "项", "组", "岁", "年", "小时", "分钟", "秒", "倍",
    "颗", "只", "条", "张", "块", "点", "遍", "下", "餐", "顿", "毫", "微", "克", "升", "斤",
    "公斤", "千克",
)

_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")
_FULL_WIDTH = str.maketrans("０１２３４５６７８９％／＜＞", "0123456789%/<>")


def _cardinal(n: int) -> str:
    """Read a non-negative integer as a Chinese number: 120 -> 一百二十, 10005 -> 一万零五."""
    if n == 0:
        return "零"
    groups: list[int] = []
    while n:
        n, group = divmod(n, 10000)
        groups.append(group)
    out, gap = "", False
    for i in range(len(groups) - 1, -1, -1):
        group = groups[i]
        if group == 0:
            gap = bool(out)
            continue
        if out and (gap or group < 1000):
            out += "零"  # 一万零五, 一亿零一百
        section, zero = "", False
        for value, name in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
            digit = group // value % 10
            if digit:
                section += ("零" if zero else "") + _DIGITS[digit] + name
                zero = False
            elif section:
                zero = True
        out += section + ("", "万", "亿", "万亿")[i]
        gap = False
    return out[1:] if out.startswith("一十") else out  # 十五, not 一十五


def _digit_by_digit(digits: str, phone: bool = False) -> str:
    """Read digits one by one; phone/ID numbers say 幺 for 1 as Mandarin speakers do."""
    spoken = "".join(_DIGITS[int(d)] for d in digits)
    return spoken.replace("一", "幺") if phone else spoken


def _term(m: re.Match[str]) -> str:
    """HbA1c -> HbA一c, B12 -> B十二, CA125 -> CA一二五 (see module docstring)."""
    def digits(d: re.Match[str]) -> str:
        run = d.group(1)
        return _cardinal(int(run)) if len(run) <= 2 and run[0] != "0" else _digit_by_digit(run)
    return re.sub(r"-?(\d+)", digits, m.group(0))


def _range(m: re.Match[str]) -> str:
    """2-3次 -> 2到3次; 10-20% -> 10%到20% so wetext says 百分之十到百分之二十."""
    low, pct, high = m.groups()
    if not pct and m.string.startswith("%", m.end()):
        pct = "%"
    return f"{low}{pct}到{high}"


def _integer(m: re.Match[str]) -> str:
    """Spell a standalone integer ourselves: wetext reads 120, 110, 12345 like phone numbers."""
    # Look a few characters either side only: slicing to the ends is quadratic on long text.
    digits, before = m.group(0), m.string[max(0, m.start() - 1): m.start()]
    after = m.string[m.end(): m.end() + 8]
    if re.match(r"\s*[A-Za-zμµ%‰℃°^×÷*]|[.:/\-]\d", after):
        return digits  # a unit, decimal, time, fraction or date: wetext reads these right
    if len(digits) >= 7:
        return _digit_by_digit(digits, phone=True)
    if len(digits) > 1 and digits[0] == "0":
        return _digit_by_digit(digits)
    if len(digits) == 4 and after.startswith("年"):
        return _digit_by_digit(digits)  # 2023年 -> 二零二三年
    if digits == "2" and not before.endswith("第") and after.startswith(_LIANG_BEFORE):
        return "两"
    return _cardinal(int(digits))


def _exponent(m: re.Match[str]) -> str:
    """×10^9/L -> 乘十的九次方/L (wetext says 乘十^九)."""
    return f"乘十的{_cardinal(int((m.group(1) or m.group(2)).translate(_SUPERSCRIPTS)))}次方"


# The pre-pass, in order. Each row: (pattern, replacement, flags). Order matters: markdown
# and units first, then the number patterns that need to see the raw digits.
_Repl = str | Callable[[re.Match[str]], str]
_RULES: list[tuple[str, _Repl, int]] = [
    (r"^[ \t]*(?:[-*_][ \t]*){3,}$", "", re.M),              # horizontal rules
    (r"^[ \t]*[-*+•][ \t]+", "", re.M),                      # bullets
    (r"(?<!\d)\*+|\*+(?!\d)|_{2,}|`+", "", 0),                # emphasis, code (keep 5*10^9)
    (r"^[ \t]{0,3}#{1,6}[ \t]*", "", re.M),                  # headings
    (r"^[ \t]*>[ \t]?", "", re.M),                           # block quotes
    (r"^[ \t]*(\d{1,2})[.)][ \t]+", r"\1、", re.M),          # "1. " list -> 1、
    (r"\[([^\]]*)\]\([^)]*\)", r"\1", 0),                    # [text](url) -> text
    (r"(?<=\d),(?=\d{3}(?!\d))", "", 0),                     # 1,000 -> 1000
    (r"[×xX*]\s*10\s*(?:\^\s*(\d+)|([⁰¹²³⁴⁵⁶⁷⁸⁹]+))", _exponent, 0),
    (_UNIT_RE.pattern, lambda m: _UNITS[m.group(1)], 0),
    (r"(?<=[\w℃%])/(?=分钟|分|小时|日|天|周|月|次|餐)", "每", 0),  # 次/分 -> 次每分
    (r"(\d{2,3})\s*/\s*(\d{2,3})(?=\s*毫米汞柱)", r"\1比\2", 0),           # 140/90mmHg
    (r"(血压[^\d\n。；;]{0,6}?)(\d{2,3})\s*/\s*(\d{2,3})", r"\1\2比\3", 0),  # 血压140/90
    (r"(?<![A-Za-z0-9])[A-Za-z]+(?:-?\d++(?!\.\d)[A-Za-z]*)+", _term, 0),
    (r"(?<![\d.:/\-])((?!0\d)\d+(?:\.\d+)?)(%?)\s*[-–—~～〜]\s*((?!0\d)\d+(?:\.\d+)?)"
     r"(?!\d|\.\d|[:/\-]\d)", _range, 0),
    (r"(?<=\d)\s*\*\s*(?=\d)", "×", 0),                      # 2*3 -> 2×3 (乘)
    (r"<(?=\s*\d)", "小于", 0),
    (r">(?=\s*\d)", "大于", 0),
    (r"(?<![0-9A-Za-z.:/^\-+±])\d+(?!\d)", _integer, 0),
]
_COMPILED = [(re.compile(pattern, flags), repl) for pattern, repl, flags in _RULES]

# Sentences that are only Chinese and punctuation need no wetext (and stay untouched).
_PLAIN = re.compile(r"[\u4e00-\u9fff\s，。、；：？！“”‘’（）《》〈〉【】…—·]*")


@functools.cache
def _normalizer() -> Normalizer:
    """One wetext Normalizer per process; it loads its FSTs lazily and caches them."""
    from wetext import Normalizer

    return Normalizer(lang="zh", operator="tn")


def _pre_pass(text: str) -> str:
    text = text.translate(_FULL_WIDTH)
    for pattern, repl in _COMPILED:
        text = pattern.sub(repl, text)
    return text


def _wetext(sentence: str) -> str:
    """Run wetext on one sentence, keeping the whitespace around it (wetext strips it)."""
    core = sentence.strip()
    if not core or _PLAIN.fullmatch(core):
        return sentence
    lead = sentence[: len(sentence) - len(sentence.lstrip())]
    trail = sentence[len(sentence.rstrip()):]
    try:
        core = _normalizer().normalize(core)
    except Exception:  # never fail a pipeline row over TN; the pre-pass text is usable
        pass
    return lead + core + trail


def normalize_for_speech(text: str) -> str:
    """Turn Chinese medical text (markdown allowed) into speakable Chinese for TTS."""
    if not text or not isinstance(text, str):
        return ""
    try:
        text = _pre_pass(text)
    except Exception:  # a regex surprise must not take the row down
        pass
    # wetext is slow and less reliable on long inputs: feed it one sentence at a time.
    return "".join(_wetext(s) for s in re.split(r"(?<=[。！？；!?;\n])", text) if s)
