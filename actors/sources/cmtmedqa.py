"""CMtMedQA (Zhongjing): multi-turn consultations as `CMtMedQA.json` (a JSON array, the HF
dataset `Suprit/CMtMedQA`) or `CMtMedQA_test.json` (the Zhongjing repo's test set).

A record is `{id, cate1, cate2, instruction, input, output, history: [[user, assistant],
...]}`. Turns, as SpeechMedAssist's `predata.py` builds them: each history pair (patient
then doctor), then `instruction` (patient) and `output` (doctor), each only if it has
text. A non-empty `input` (Alpaca-style context, almost always "") is appended to the
instruction's turn rather than dropped. Texts that are empty are left out, and consecutive
turns of one speaker (an empty instruction gives two doctor turns in a row) are merged,
joined by a newline. `cate1`/`cate2` become the category and subcategory; the key is `id`
(a content hash when it is missing). A history that is not a list of [string, string]
pairs is an `ingest.malformed` item naming the pair.

A path that names a file is read whatever its name; in a folder the file of the `split`
option is looked for (recursively, the shallowest wins), so a converted
`CMtMedQA-sharegpt.json` lying next to it is not read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field

from actors.sources.common import (
    SourceFormat,
    SourceItem,
    SourceOptions,
    SourceRef,
    basename,
    dialogue_from_utterances,
    failure,
    files_under,
    is_file,
    json_records,
    reports_empty_file,
)
from schemas import content_key

FILE_NAMES = {"train": "CMtMedQA.json", "test": "CMtMedQA_test.json"}


def _text(value: Any) -> str | None:
    """A text field: "" when absent or null, None when it is not a string."""
    if value is None:
        return ""
    return value if isinstance(value, str) else None


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def map_cmtmedqa(obj: Any, ref: SourceRef, where: str) -> SourceItem:
    """One CMtMedQA record → a dialogue, or why not."""
    if not isinstance(obj, dict):
        return failure(where, "malformed", f"expected a record object {{id, instruction, output, history, ...}}, "
                       f"got a JSON {type(obj).__name__}", obj)
    if not {"instruction", "output", "history"} & obj.keys():
        hint = "; it looks like ShareGPT (has 'conversations'), use format sharegpt" if "conversations" in obj else ""
        return failure(where, "malformed", f"none of 'instruction', 'output', 'history' is present{hint}", obj)
    history = obj.get("history")
    history = [] if history is None else history
    if not isinstance(history, list):
        return failure(where, "malformed", f"'history' must be a list of [patient, doctor] pairs, got "
                       f"{_short(history)}; fix the record or drop it from the file", obj)
    for i, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
            return failure(where, "malformed", f"history[{i}] must be a [patient, doctor] pair of strings, got "
                           f"{_short(pair)}; fix the record or drop it from the file", obj)
    fields = {name: _text(obj.get(name)) for name in ("instruction", "input", "output")}
    for name, value in fields.items():
        if value is None:
            return failure(where, "malformed", f"'{name}' must be a string, got {_short(obj.get(name))}", obj)
    utterances: list[tuple[str, str]] = []
    for patient, doctor in history:
        utterances += [("patient", patient), ("doctor", doctor)]
    question = fields["instruction"].strip()
    extra = fields["input"].strip()
    if extra and extra != question:
        question = f"{question}\n{extra}" if question else extra
    utterances += [("patient", question), ("doctor", fields["output"])]
    key = obj.get("id")
    source_key = str(key).strip() if isinstance(key, (str, int)) and str(key).strip() else content_key(
        json.dumps([history, fields["instruction"], fields["input"], fields["output"]], ensure_ascii=False))
    category = {name: value.strip() or None if isinstance(value, str) else None
                for name, value in (("category", obj.get("cate1")), ("subcategory", obj.get("cate2")))}
    return dialogue_from_utterances(ref, where, source_key, utterances, obj, **category)


@reports_empty_file
def read_cmtmedqa_file(ref: SourceRef, path: str) -> Iterator[SourceItem]:
    try:
        for entry in json_records(path):
            yield entry if isinstance(entry, SourceItem) else map_cmtmedqa(entry[1], ref, entry[0])
    except OSError as exc:
        yield failure(path, "unreadable_file", f"{exc}; check that the file exists and can be read, then rerun")


class CMtMedQAOptions(SourceOptions):
    split: Literal["train", "test"] = Field(
        "train", description=f"in a folder, which file to read: train = {FILE_NAMES['train']}, "
        f"test = {FILE_NAMES['test']}; a path naming a file is read whatever this says")


class CMtMedQA(SourceFormat):
    """CMtMedQA multi-turn consultations (instruction/output/history records)."""

    format = "cmtmedqa"
    default_treatment = "consultation"
    Options = CMtMedQAOptions

    def read(self, ref: SourceRef) -> Iterator[SourceItem]:
        options = self.options_of(ref)
        try:
            single = is_file(ref.path)
            candidates = [] if single else sorted(files_under(ref.path, (".json",)), key=lambda p: (p.count("/"), p))
        except OSError as exc:
            yield failure(ref.path, "unreadable_file", f"{exc}; check the path and rerun")
            return
        if single:
            yield from read_cmtmedqa_file(ref, ref.path)
            return
        name = FILE_NAMES[options.split]
        path = next((p for p in candidates if basename(p).lower() == name.lower()), None)
        if path is None:
            yield failure(f"{ref.path} [{options.split}]", "missing_file",
                          f"no {name} in this folder or its subfolders; download it, name the file itself as the "
                          f"source path, or set the source option `split`")
            return
        yield from read_cmtmedqa_file(ref, path)
