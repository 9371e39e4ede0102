"""CMB-Exam (Chinese Medical Benchmark, exam part): a JSON array of multiple-choice items
`{exam_type, exam_class, exam_subject, question, answer, question_type, option: {A: ..}, id?}`.

Each selected item becomes a two-turn "let me quiz you, doctor" dialogue: the patient asks
the doctor to answer the question (stem plus its options, in their original order, as
"A. text" lines), the doctor answers "<letter>. <option text>". The quiz builder here is
shared with the CMExam adapter.

Selection (SOURCES.md §2, as the paper did): the exam types 医师考试, 护理考试, 专业知识考试,
医学考研 and single-choice questions only, with a non-empty answer whose letters are among
the options. Items outside the selection are reported as `ingest.not_selected` (never
skipped silently), naming the option that would select them.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

from actors.sources.common import (
    SourceFormat,
    SourceItem,
    SourceOptions,
    SourceRef,
    failure,
    files_under,
    json_records,
    make_dialogue,
    reports_empty_file,
)
from schemas import Turn, content_key

PAPER_EXAM_TYPES = ("医师考试", "护理考试", "专业知识考试", "医学考研")
SINGLE_CHOICE = "单项选择题"
MULTIPLE_CHOICE = "多项选择题"

# -- the quiz dialogue, shared with CMExam --------------------------------------------------
# Own wording (not the official template): the patient turns the question into a small quiz.
_ASK_SINGLE = "医生，我这儿有一道单选题，想考考您。"
_ASK_MULTIPLE = "医生，我这儿有一道多选题，想考考您。"
_TELL_SINGLE = "请告诉我哪个选项是对的：说出它的字母和内容。"
_TELL_MULTIPLE = "正确选项可能不止一个，请把每个正确选项的字母和内容都告诉我。"
_EXPLANATION = "解析："
_SEPARATORS = re.compile(r"[\s,，、;；/|]+")


def quiz_key(question: str, options: Sequence[tuple[str, str]]) -> str:
    """A content key of a question and its options (for items without an id of their own)."""
    return content_key(question.strip() + "\n" + "\n".join(f"{letter}. {text}" for letter, text in options))


def parse_answer(value: Any) -> list[str] | None:
    """Answer letters ("B", "ABD", "A, C", ["A", "C"]) → ["A", ...] in the given order, once
    each; [] when empty (or NaN as pandas writes it); None when it is not made of letters."""
    if value is None:
        return []
    if isinstance(value, float):
        return [] if value != value else None  # NaN
    if isinstance(value, list):
        value = "".join(str(v) for v in value)
    text = _SEPARATORS.sub("", str(value)).upper()
    if text in ("", "NAN", "NONE", "NULL"):
        return []
    if not all("A" <= c <= "Z" for c in text):
        return None
    return list(dict.fromkeys(text))


def quiz_turns(question: str, options: Sequence[tuple[str, str]], answer: Sequence[str],
               explanation: str | None = None, *, multiple: bool | None = None) -> list[Turn]:
    """The two turns of a quiz item.

    `options` are (letter, text) in display order; `answer` letters must be among them (the
    caller checks). The doctor gives every answer letter with its text, in option order, and
    then the explanation when there is one. `multiple` (default: more than one answer letter)
    picks the multiple-choice wording.
    """
    multiple = len(answer) > 1 if multiple is None else multiple
    listed = "\n".join(f"{letter}. {text}" for letter, text in options)
    ask = "\n".join([_ASK_MULTIPLE if multiple else _ASK_SINGLE, question.strip(), listed,
                     _TELL_MULTIPLE if multiple else _TELL_SINGLE])
    chosen = set(answer)
    reply = "\n".join(f"{letter}. {text}" for letter, text in options if letter in chosen)
    if explanation and explanation.strip():
        explanation = explanation.strip()
        reply += "\n" + (explanation if explanation.startswith(_EXPLANATION) else _EXPLANATION + explanation)
    return [Turn(role="patient", text=ask), Turn(role="doctor", text=reply)]


def check_answer(answer: list[str] | None, raw_answer: Any, options: Sequence[tuple[str, str]],
                 where: str, raw: Any) -> SourceItem | None:
    """A failure when the answer is empty, not letters, or names a letter the options lack."""
    if answer is None:
        return failure(where, "bad_answer", f"answer {raw_answer!r} is not option letters (like 'B' or 'ACD'); "
                       "correct it in the file", raw)
    if not answer:
        return failure(where, "no_answer", "the answer is empty, so the item cannot teach anything; "
                       "add the answer letter or leave it out", raw)
    letters = [letter for letter, _ in options]
    missing = [a for a in answer if a not in letters]
    if missing:
        return failure(where, "bad_answer", f"answer {raw_answer!r} names {', '.join(missing)}, which is not among "
                       f"the options ({', '.join(letters)}); correct the answer or the options", raw)
    return None


# -- CMB ----------------------------------------------------------------------------------------
def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def map_cmb(obj: Any, ref: SourceRef, where: str, options: CMBExam.Options, file_stem: str) -> SourceItem:
    """One CMB item → a quiz dialogue, or why not. Upstream ids restart in every file
    (val and test both count from 1), so an id is keyed together with its file's stem."""
    if not isinstance(obj, dict):
        return failure(where, "malformed", f"expected an exam item object, got {type(obj).__name__}", obj)
    exam_type, question_type = obj.get("exam_type"), obj.get("question_type")
    if options.exam_types is not None and exam_type not in options.exam_types:
        return failure(where, "not_selected", f"exam_type {exam_type!r} is not selected (the paper keeps "
                       f"{', '.join(PAPER_EXAM_TYPES)}); add it to options.exam_types to read it", obj)
    if options.question_types is not None and question_type not in options.question_types:
        return failure(where, "not_selected", f"question_type {question_type!r} is not selected (the paper keeps "
                       f"only {SINGLE_CHOICE}); add it to options.question_types to read it", obj)
    question = obj.get("question")
    if not isinstance(question, str):
        return failure(where, "malformed", "missing 'question' (the stem, a string)", obj)
    if not question.strip():
        return failure(where, "empty_turn", "the question stem is empty", obj)
    raw_options = obj.get("option")
    if not isinstance(raw_options, dict) or not raw_options:
        return failure(where, "malformed", "missing 'option' (an object of letter → text, like {\"A\": ...})", obj)
    choices: list[tuple[str, str]] = []
    for letter, value in raw_options.items():  # insertion order, never sorted
        text = _text(value)
        if text is None:
            return failure(where, "malformed", f"option {letter!r} is a {type(value).__name__}, not text", obj)
        if text:  # an empty option slot (e.g. "E": "" on a four-option item) is not shown
            choices.append((str(letter).strip().upper(), text))
    raw_answer = obj.get("answer")
    answer = parse_answer(raw_answer)
    bad = check_answer(answer, raw_answer, choices, where, obj)
    if bad is not None:
        return bad
    if question_type == SINGLE_CHOICE and len(answer) > 1:
        return failure(where, "bad_answer", f"a {SINGLE_CHOICE} item with answer {raw_answer!r}; "
                       f"correct the answer or its question_type ({MULTIPLE_CHOICE})", obj)
    key = obj.get("id")
    source_key = f"{file_stem}:{key}" if key not in (None, "") else quiz_key(question, choices)
    turns = quiz_turns(question, choices, answer, multiple=question_type == MULTIPLE_CHOICE or len(answer) > 1)
    category, subcategory = _text(exam_type), _text(obj.get("exam_class"))
    return SourceItem(where, dialogue=make_dialogue(ref, source_key, turns, category=category or None,
                                                    subcategory=subcategory or None),
                      raw=json.dumps(obj, ensure_ascii=False))


def _missing(path: str, what: str) -> SourceItem:
    return failure(path, "no_input", f"no {what} found at this path; check the source's path")


class CMBExam(SourceFormat):
    """CMB-Exam items (`CMB-train-merge.json`, or a folder of `*-merge.json` files)."""

    format = "cmb_exam"
    default_treatment = "knowledge_qa"

    class Options(SourceOptions):
        # None reads every exam type / question type.
        exam_types: tuple[str, ...] | None = PAPER_EXAM_TYPES
        question_types: tuple[str, ...] | None = (SINGLE_CHOICE,)
        # When `path` is a folder: which of its .json/.jsonl files hold items. CMB ships each
        # split as `*-merge.json` (all items) next to `*-hierarchy.json` (the same items as a
        # tree); reading both would read every item twice.
        files: str = "*-merge.json"

    def read(self, ref: SourceRef) -> Iterator[SourceItem]:
        options = self.options_of(ref)
        paths = files_under(ref.path, (".json", ".jsonl"))
        if not paths:
            yield _missing(ref.path, "CMB-Exam .json file")
            return
        single = len(paths) == 1 and paths[0] == ref.path
        for path in paths:
            name = path.rsplit("/", 1)[-1]
            if not single and not fnmatch.fnmatch(name, options.files):
                yield failure(path, "not_selected", f"file {name} does not match options.files "
                              f"({options.files!r}), so its records are not read; widen options.files or point "
                              f"the source at the file to read it")
                continue
            yield from self._read_file(ref, path, options)

    @staticmethod
    @reports_empty_file
    def _read_file(ref: SourceRef, path: str, options: CMBExam.Options) -> Iterator[SourceItem]:
        exam = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        try:
            for entry in json_records(path):
                yield entry if isinstance(entry, SourceItem) else map_cmb(entry[1], ref, entry[0], options, exam)
        except FileNotFoundError as exc:
            yield failure(path, "no_input", f"{exc}; check the source's path")
