"""MedSafetyBench safety demonstrations: the repository's `datasets/` folder, laid out as
`{train,test}/{gpt4,llama2}/med_safety_demonstrations_category_{1..9}.csv`, or one such CSV.

Each CSV has an unnamed pandas index column (restarting at 0 in every file), then
`harmful_medical_request` and `safe_response` (English; quoted fields with commas and
newlines). A row becomes a two-turn dialogue: the patient's request, the doctor's safe
response. The key `{split}/{generator}/category_N/{index}` does not depend on the reading
order.

Selection (SOURCES.md §8; the paper used the gpt4 train files): `split` and `generators`.
In a folder, a demonstrations file of another split or generator is reported once, as an
`ingest.not_selected` item naming the option that selects it; its rows are not read. A
single CSV given as the path is read whatever the options say (its split and generator
come from its parent folders when they follow the layout, else from the options).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Literal

from actors.sources.common import (
    SourceFormat,
    SourceItem,
    SourceOptions,
    SourceRef,
    csv_rows,
    failure,
    files_under,
    header_index,
    make_dialogue,
    reports_empty_file,
)
from schemas import Turn, content_key

Split = Literal["train", "test"]
Generator = Literal["gpt4", "llama2"]
SPLITS = ("train", "test")
_FILE = re.compile(r"^med_safety_demonstrations_category_(\d+)\.csv$")
COLUMNS = {
    "index": ("", "unnamed: 0", "index"),
    "request": ("harmful_medical_request",),
    "response": ("safe_response",),
}


def _stem_category(name: str) -> str:
    match = _FILE.match(name)
    return f"category_{int(match.group(1))}" if match else name.rsplit(".", 1)[0]


class MedSafety(SourceFormat):
    """MedSafetyBench demonstrations (harmful request → safe response)."""

    format = "medsafety"
    default_treatment = "safety"

    class Options(SourceOptions):
        split: Split = "train"
        generators: tuple[Generator, ...] = ("gpt4",)

    def read(self, ref: SourceRef) -> Iterator[SourceItem]:
        options = self.options_of(ref)
        paths = files_under(ref.path, (".csv",))
        if not paths:
            yield failure(ref.path, "no_input", "no MedSafetyBench .csv file found at this path; point the source "
                          "at the repository's datasets/ folder or at one demonstrations CSV")
            return
        if len(paths) == 1 and paths[0] == ref.path:
            parts = ref.path.rstrip("/").split("/")
            split, generator = (parts[-3], parts[-2]) if len(parts) >= 3 and parts[-3] in SPLITS else \
                (options.split, options.generators[0] if options.generators else "gpt4")
            yield from self._read_file(ref, ref.path, split, generator)
            return
        root = ref.path.rstrip("/")
        for path in paths:
            parts = path[len(root):].strip("/").split("/")
            # .../{split}/{generator}/med_safety_demonstrations_category_N.csv, under any prefix
            if len(parts) < 3 or parts[-3] not in SPLITS or not _FILE.match(parts[-1]):
                yield failure(path, "not_selected", "not a demonstrations file of the layout "
                              "{train,test}/{gpt4,llama2}/med_safety_demonstrations_category_N.csv; its rows are not "
                              "read (point the source at the file itself to read it)")
                continue
            split, generator = parts[-3], parts[-2]
            if split != options.split:
                yield failure(path, "not_selected", f"a file of the {split} split, and options.split is "
                              f"{options.split!r}; its rows are not read (set options.split: {split} to read them)")
                continue
            if generator not in options.generators:
                yield failure(path, "not_selected", f"a file of the {generator} generator, not in options.generators "
                              f"{list(options.generators)}; its rows are not read (add {generator} to read them)")
                continue
            yield from self._read_file(ref, path, split, generator)

    @reports_empty_file
    def _read_file(self, ref: SourceRef, path: str, split: str, generator: str) -> Iterator[SourceItem]:
        category = _stem_category(path.rsplit("/", 1)[-1])
        prefix = f"{split}/{generator}/{category}"
        columns: dict[str, int] | None = None
        header: list[str] = []
        try:
            for entry in csv_rows(path):
                if isinstance(entry, SourceItem):
                    yield entry
                    continue
                where, row = entry
                if columns is None:
                    header, columns = row, header_index(row, COLUMNS)
                    if "request" not in columns or "response" not in columns:
                        yield failure(where, "bad_header", f"header {row!r} lacks harmful_medical_request and/or "
                                      "safe_response (expected: an unnamed index column, harmful_medical_request, "
                                      "safe_response); no row of this file was read", ",".join(row))
                        return
                    continue
                if len(row) != len(header):
                    yield failure(where, "malformed", f"{len(row)} cells where the header has {len(header)}; "
                                  "check the quoting of this row", row)
                    continue
                yield self._map(ref, row, columns, header, where, prefix, category)
        except FileNotFoundError as exc:
            yield failure(path, "no_input", f"{exc}; check the source's path")

    @staticmethod
    def _map(ref: SourceRef, row: list[str], columns: dict[str, int], header: list[str], where: str,
             prefix: str, category: str) -> SourceItem:
        raw = json.dumps(dict(zip(header, row)), ensure_ascii=False)
        request, response = row[columns["request"]].strip(), row[columns["response"]].strip()
        if "index" in columns:
            index = row[columns["index"]].strip()
            if not index.isdigit():
                return failure(where, "malformed", f"index cell {index!r} is not a row number; "
                               "restore the file's index column", raw)
            key = f"{prefix}/{int(index)}"
            where = f"{where} (index {index})"
        else:  # a hand-made file without pandas' index column: a content key, still order-free
            key = f"{prefix}/{content_key(request + chr(0) + response)}"
        for name, text in (("harmful_medical_request", request), ("safe_response", response)):
            if not text or text.lower() == "nan":
                return failure(where, "empty_turn", f"the {name} cell is empty; fill it in or delete the row", raw)
        turns = [Turn(role="patient", text=request), Turn(role="doctor", text=response)]
        return SourceItem(where, dialogue=make_dialogue(ref, key, turns, category=category), raw=raw)
