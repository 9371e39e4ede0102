"""CMExam: Chinese National Medical Licensing Examination questions, as CSV
(`data/train.csv`, `val.csv`, `test.csv`) with the columns Question, Options (lines
"A 选项文本"), Answer (letters; NaN for some rows), Explanation (optional) and annotation
columns. Some releases use Chinese headers (问题, 选项, 答案, 解析).

Each row becomes the same two-turn quiz dialogue as CMB (`cmb.quiz_turns`); a
multi-letter answer gives every letter with its text, and the explanation, when there is
one, follows the answer. Rows have no id of their own: the key is a content hash of the
question and its options, so it does not depend on the row's position.

"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from actors.sources.cmb import check_answer, parse_answer, quiz_key, quiz_turns
from actors.sources.common import (
    SourceFormat,
    SourceItem,
    SourceRef,
    cell,
    csv_rows,
    failure,
    files_under,
    header_index,
    make_dialogue,
    reports_empty_file,
)

# -- CMExam -------------------------------------------------------------------------------

COLUMNS: dict[str, tuple[str, ...]] = {
    "question": ("question", "问题", "题目", "题干"),
    "options": ("options", "option", "选项"),
    "answer": ("answer", "答案"),
    "explanation": ("explanation", "解析", "解释", "答案解析"),
}
REQUIRED = ("question", "options", "answer")
_OPTION_LINE = re.compile(r"^([A-Za-z])(?:\s+|[.．、:：)）]\s*)(.*)$")
_MISSING = ("", "nan", "none", "null")


def parse_options(text: str) -> list[tuple[str, str]] | str:
    """"A 选项\\nB 选项" → [("A", "选项"), ...] in order; a message when a line is not an option."""
    options: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        match = _OPTION_LINE.match(line)
        if not match or not match.group(2).strip():
            return f"option line {line!r} is not '<letter> <text>'"
        letter = match.group(1).upper()
        if any(letter == seen for seen, _ in options):
            return f"option {letter} appears twice"
        options.append((letter, match.group(2).strip()))
    return options if options else "the Options cell is empty"


def map_cmexam(row: list[str], columns: dict[str, int], ref: SourceRef, where: str, raw: str) -> SourceItem:
    question = cell(row, columns["question"])
    if not question:
        return failure(where, "empty_turn", "the Question cell is empty", raw)
    options = parse_options(cell(row, columns["options"]))
    if isinstance(options, str):
        return failure(where, "malformed", f"{options}; Options must be lines like 'A 选项文本'", raw)
    raw_answer = cell(row, columns["answer"])
    answer = parse_answer(raw_answer)
    bad = check_answer(answer, raw_answer, options, where, raw)
    if bad is not None or answer is None:
        return bad or failure(where, "bad_answer", "no answer letters", raw)
    explanation = cell(row, columns.get("explanation"))
    if explanation.lower() in _MISSING:
        explanation = ""
    turns = quiz_turns(question, options, answer, explanation or None)
    return SourceItem(where, dialogue=make_dialogue(ref, quiz_key(question, options), turns), raw=raw)


class CMExam(SourceFormat):
    """CMExam CSV files (`train.csv`, ..., or a folder of them)."""

    format = "cmexam"
    default_treatment = "knowledge_qa"

    def read(self, ref: SourceRef) -> Iterator[SourceItem]:
        paths = files_under(ref.path, (".csv",))
        if not paths:
            yield failure(ref.path, "no_input", "no CMExam .csv file found at this path; check the source's path")
            return
        for path in paths:
            try:
                yield from self._read_file(ref, path)
            except FileNotFoundError as exc:
                yield failure(path, "no_input", f"{exc}; check the source's path")

    @reports_empty_file
    def _read_file(self, ref: SourceRef, path: str) -> Iterator[SourceItem]:
        columns: dict[str, int] | None = None
        header: list[str] = []
        for entry in csv_rows(path):
            if isinstance(entry, SourceItem):
                yield entry
                continue
            where, row = entry
            if columns is None:
                columns = header_index(row, COLUMNS)
                missing = [c for c in REQUIRED if c not in columns]
                if missing:
                    yield failure(where, "bad_header", f"no {', '.join(missing)} column in the header {row!r}; "
                                  "expected the columns Question, Options, Answer (Explanation optional), or "
                                  "问题, 选项, 答案 (解析 optional). Rename the header; no row of this file was read.",
                                  ",".join(row))
                    return
                header = row
                continue
            if len(row) != len(header):
                yield failure(where, "malformed", f"{len(row)} cells where the header has {len(header)}; "
                              "check the quoting of this row", row)
                continue
            yield map_cmexam(row, columns, ref, where, json.dumps(dict(zip(header, row)), ensure_ascii=False))
