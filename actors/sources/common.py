"""What every source adapter shares: the item type, streaming readers, turn mapping.

Adapters stream (a JSON array is parsed incrementally, never loaded whole) and never raise
on bad input: a record they cannot map becomes a `SourceItem` with a reason code and its
location (file plus record or line number), so ingestion reconciles as
read = written + rejected.

What holds for every format is applied once, by `SourceFormat.items` (the stream ingestion
reads): a link that leads out of a source folder is reported, not followed
(`ingest.outside_root`, `ingest.broken_link`); a dialogue too long to be spoken is
quarantined (`ingest.turn_too_long` over `MAX_TURN_CHARS` in one turn,
`ingest.dialogue_too_long` over `MAX_DIALOGUE_CHARS` in all); a source that yields nothing
at all (a missing path, an empty folder) is one `ingest.no_input` item, so it shows in the
counts; a file that holds no record is one `ingest.empty_file` item naming it
(`reports_empty_file` on each format's reader of one file).
A text line longer than `MAX_LINE_BYTES` is `ingest.line_too_long` and skipped up to the
next newline, never accumulated in memory.
"""

from __future__ import annotations

import codecs
import csv
import functools
import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, ClassVar

import ijson
from pydantic import BaseModel, ConfigDict

from schemas import Gender, Rejection, SourceDialogue, Treatment, Turn, record_id
from storage.fs import MISSING_TARGET, exists, resolve, walk_files

PATIENT_ROLES = frozenset({"human", "user", "patient", "patients", "病人", "患者"})
DOCTOR_ROLES = frozenset({"gpt", "assistant", "doctor", "医生"})
_SNIFF_BYTES = 1 << 16
# Simplified Chinese in GBK: 0-2% of its characters outside GB2312; Big5 read as GBK: ~50%.
BIG5_OUTSIDE_GB2312 = 0.2
BIG5_MIN_CHARS = 8
# A spoken turn is a few sentences (the paper's average is 36 characters) and the longest
# real source fields (encyclopedia answers, exam cases) are a few thousand characters. A
# turn beyond this is a broken or merged record (a whole document in one field): it would
# overflow every LLM context and cost the speech-text normaliser about a minute per MB.
MAX_TURN_CHARS = 10_000
MAX_DIALOGUE_CHARS = 50_000
# Longest text line read (JSON lines, CSV rows, transcripts): the longest legitimate record
# is well under 1 MB; past this a line is reported and skipped instead of held in memory.
MAX_LINE_BYTES = 8 << 20
# The csv module refuses fields over 128 KiB and would end the file there; a long field is
# a record for the size rules above to judge, so the limit is the line limit (process-wide).
csv.field_size_limit(MAX_LINE_BYTES)


@dataclass(frozen=True)
class SourceItem:
    """One record read from a source: a dialogue, or why it could not be mapped."""

    location: str
    dialogue: SourceDialogue | None = None
    reason: str = ""
    detail: str = ""
    raw: str = ""

    def rejection(self, source: str) -> Rejection:
        """This quarantined item as an ingest rejection, its id derived from its location."""
        return Rejection(id=record_id(source, self.location), stage="ingest", reason=self.reason,
                         detail=self.detail, record_json=self.raw)


def failure(where: str, reason: str, detail: str, raw: Any = "") -> SourceItem:
    """A quarantined item: `reason` is a code (prefixed `ingest.`), `detail` says what to do."""
    return SourceItem(where, reason=f"ingest.{reason}", detail=f"{where}: {detail}", raw=raw_text(raw)[:100_000])


class SourceOptions(BaseModel):
    """Base of a format's own options (config `sources[].options`); unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class SourceRef:
    """One configured source, as an adapter sees it."""

    name: str
    path: str
    treatment: Treatment
    options: SourceOptions


class SourceFormat(ABC):
    """A corpus format. Subclasses set `format`, `default_treatment`, maybe `Options`."""

    format: ClassVar[str]
    default_treatment: ClassVar[Treatment] = "consultation"
    Options: ClassVar[type[SourceOptions]] = SourceOptions

    @abstractmethod
    def read(self, ref: SourceRef) -> Iterator[SourceItem]:
        """Every record of the source, in file order, mapped or quarantined."""

    def items(self, ref: SourceRef) -> Iterator[SourceItem]:
        """`read` with the rules every format shares (the module docstring): what ingestion
        reads. Links leading out of the source folder first, then the records."""
        seen = False
        for item in escaped_files(ref.path):
            seen = True
            yield item
        for item in self.read(ref):
            seen = True
            yield item if item.dialogue is None else too_long(item) or item
        if not seen:
            loc = resolve(ref.path)
            what = "an empty file or folder" if exists(loc, loc.root) else "no such file or folder"
            yield failure(ref.path, "no_input", f"no record was found ({what}); check that the source path names "
                          "the corpus")

    def options_of(self, ref: SourceRef) -> Any:
        """`ref.options` as this format's Options (its defaults when given the bare base)."""
        if isinstance(ref.options, self.Options):
            return ref.options
        return self.Options.model_validate(ref.options.model_dump())


def file_items(path: str, items: Iterable[SourceItem]) -> Iterator[SourceItem]:
    """The items of one file, or, when it gives none (0 bytes, blank lines, a header without
    rows), one `ingest.empty_file` failure naming it: a file is never passed over silently,
    even in a folder whose other files hold records."""
    seen = False
    for item in items:
        seen = True
        yield item
    if not seen:
        yield failure(path, "empty_file", "the file holds no record (it is empty, blank or only a header); remove "
                      "it, or restore it from the corpus download")


def reports_empty_file(read_file: Callable[..., Iterator[SourceItem]]) -> Callable[..., Iterator[SourceItem]]:
    """Decorates a reader of one file (an argument named `path`) with `file_items`."""
    signature = inspect.signature(read_file)

    @functools.wraps(read_file)
    def read(*args: Any, **kwargs: Any) -> Iterator[SourceItem]:
        yield from file_items(signature.bind(*args, **kwargs).arguments["path"], read_file(*args, **kwargs))

    return read


def make_dialogue(ref: SourceRef, source_key: str, turns: list[Turn], **fields: Any) -> SourceDialogue:
    return SourceDialogue(id=record_id(ref.name, source_key), source=ref.name, source_key=source_key,
                          treatment=ref.treatment, turns=turns, **fields)


def map_turns(pairs: Sequence[tuple[Any, Any]], where: str, raw: Any) -> list[Turn] | SourceItem:
    """(role, text) pairs → turns that start with the patient, alternate and hold a doctor
    reply; else a failure.

    Roles are normalised (human/user/Patients/病人 → patient, gpt/assistant/Doctor/医生 →
    doctor); text is stripped. Consecutive turns of one speaker are not merged silently:
    they are a failure the adapter may pre-empt by merging where its corpus calls for it.
    """
    turns: list[Turn] = []
    for i, (role, text) in enumerate(pairs):
        if not isinstance(text, str):
            return failure(where, "malformed", f"turn {i} needs a string text, got {type(text).__name__}", raw)
        name = str(role).strip().lower()
        if name not in PATIENT_ROLES | DOCTOR_ROLES:
            return failure(where, "bad_role", f"turn {i} has role {role!r}; expected a patient (human/user) or doctor (gpt/assistant) role", raw)
        if not text.strip():
            return failure(where, "empty_turn", f"turn {i} is empty", raw)
        turns.append(Turn(role="patient" if name in PATIENT_ROLES else "doctor", text=text.strip()))
    if not turns:
        return failure(where, "malformed", "no turns", raw)
    if turns[0].role != "patient":
        return failure(where, "bad_role", "the first turn must be the patient's", raw)
    for i in range(1, len(turns)):
        if turns[i].role == turns[i - 1].role:
            return failure(where, "roles_not_alternating", f"turns {i - 1} and {i} are both {turns[i].role}", raw)
    if len(turns) == 1:
        return failure(where, "no_doctor_turn", "the dialogue has a patient turn only (no doctor reply), so there is "
                       "nothing to learn from it; nothing to fix unless the source lost the replies", raw)
    return turns


def too_long(item: SourceItem) -> SourceItem | None:
    """The quarantined form of a dialogue too long to be spoken, or None if it is not."""
    assert item.dialogue is not None
    total = 0
    for i, turn in enumerate(item.dialogue.turns):
        total += len(turn.text)
        if len(turn.text) > MAX_TURN_CHARS:
            return failure(item.location, "turn_too_long", f"turn {i} has {len(turn.text):,} characters, over the "
                           f"{MAX_TURN_CHARS:,} a spoken turn may have (MAX_TURN_CHARS); the record is left out. Check "
                           "the source: a field this long is usually a whole document or several records run together",
                           item.raw)
    if total > MAX_DIALOGUE_CHARS:
        return failure(item.location, "dialogue_too_long", f"the dialogue has {total:,} characters in "
                       f"{len(item.dialogue.turns)} turns, over the {MAX_DIALOGUE_CHARS:,} one spoken consultation may "
                       "have (MAX_DIALOGUE_CHARS); the record is left out. Check the source for records run together",
                       item.raw)
    return None


def merge_same_speaker(pairs: Sequence[tuple[str, str]], sep: str = "") -> list[tuple[str, str]]:
    """Join consecutive utterances of one speaker (corpora that split a turn in pieces)."""
    merged: list[tuple[str, str]] = []
    for role, text in pairs:
        if merged and merged[-1][0] == role:
            merged[-1] = (role, merged[-1][1] + sep + text)
        else:
            merged.append((role, text))
    return merged


GENDER_WORDS: dict[str, Gender] = {"男": "male", "女": "female", "male": "male", "female": "female", "m": "male", "f": "female"}


# -- dialogues from utterances ----------------------------------------------------------
MERGE_SEP = "\n"


def raw_text(raw: Any) -> str:
    return raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False, default=str)


def dialogue_from_utterances(ref: SourceRef, where: str, source_key: str, utterances: Sequence[tuple[str, str]],
                             raw: Any, **fields: Any) -> SourceItem:
    """(patient|doctor, text) utterances → a dialogue, or why not.

    Utterances without text are left out (they carry nothing); consecutive utterances of
    one speaker are merged (newline-joined); the result must start with the patient and
    hold at least one doctor turn.
    """
    pairs = [(role, text.strip()) for role, text in utterances if text.strip()]
    if not pairs:
        return failure(where, "malformed", "no utterance has any text; the record is empty, check its source", raw)
    pairs = merge_same_speaker(pairs, MERGE_SEP)
    if all(role != "doctor" for role, _ in pairs):
        return failure(where, "no_doctor_turn", "the dialogue has patient turns only (no doctor reply), so there is "
                       "nothing to learn from it; nothing to fix unless the source lost the replies", raw)
    turns = map_turns(pairs, where, raw)
    if isinstance(turns, SourceItem):
        return turns
    return SourceItem(where, dialogue=make_dialogue(ref, source_key, turns, **fields), raw=raw_text(raw))


# -- paths -----------------------------------------------------------------------------
def basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def stem(path: str) -> str:
    name = basename(path)
    return name.rsplit(".", 1)[0] if "." in name else name


def is_file(path: str) -> bool:
    loc = resolve(path)
    return loc.fs.get_file_info(loc.root).type.name == "File"


# -- byte streams ----------------------------------------------------------------------
def _decodes(data: bytes, encoding: str) -> bool:
    try:
        data.decode(encoding)
    except UnicodeDecodeError as exc:
        return exc.start >= len(data) - 3  # only a character cut at the end of the sample
    return True


def _outside_gb2312(data: bytes) -> float:
    """Share of the Chinese characters of `data`, read as GB18030, outside GB2312 (0 when
    there are fewer than `BIG5_MIN_CHARS` of them: too few to tell).

    Simplified Chinese text in GBK stays almost wholly inside GB2312; Big5 bytes read as
    GB18030 decode without error (its byte ranges cover Big5's) but land, about half of them,
    on rare characters outside it (trail bytes 0x40-0x7E). Punctuation is left out: GBK and
    GB2312 map a few of its codes differently (the em dash)."""
    chinese = [c for c in data.decode("gb18030", "ignore") if "\u4e00" <= c <= "\u9fff"]
    if len(chinese) < BIG5_MIN_CHARS:
        return 0.0
    outside = 0
    for c in chinese:
        try:
            c.encode("gb2312")
        except UnicodeEncodeError:
            outside += 1
    return outside / len(chinese)


def sniff_encoding(head: bytes) -> str:
    """The encoding of a text file that is not UTF-16/32 with a byte-order mark, from its
    first bytes: UTF-8; else GB18030 (a superset of GBK); else Big5 (as Windows code page
    950) when the bytes decode as Big5 and, read as GB18030, are mostly outside GB2312.
    Neither UTF-8 nor GB18030: UTF-8, so the parser reports the bad byte's position."""
    if _decodes(head, "utf-8") or not _decodes(head, "gb18030"):
        return "utf-8"
    if _decodes(head, "cp950") and _outside_gb2312(head) > BIG5_OUTSIDE_GB2312:
        return "cp950"
    return "gb18030"


_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


class Utf8Stream:
    """A binary stream re-encoded as UTF-8 without a byte-order mark.

    The encoding is sniffed from the first 64 KiB: UTF-16 or UTF-32 when the file starts with
    their byte-order mark (what Windows tools write as "Unicode"), else `sniff_encoding`:
    UTF-8 (with or without BOM), GB18030 (a superset of GBK, common in Chinese corpora) or
    Big5 (Traditional Chinese, kept as written). Decoding is incremental, so a file of any
    size streams. `peek()` gives the first non-space byte (to tell a JSON array from
    JSON lines).
    """

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        head = raw.read(_SNIFF_BYTES)
        if head.startswith(codecs.BOM_UTF8):
            head = head[len(codecs.BOM_UTF8):]
        # UTF-32 first: its little-endian mark starts with UTF-16's. The codec reads the mark.
        marked = [enc for bom, enc in _BOMS if head.startswith(bom)]
        if marked:
            self.encoding = marked[0]
        else:
            self.encoding = sniff_encoding(head)
        self._decoder = codecs.getincrementaldecoder(self.encoding)("strict")
        self._buffer = self._transcode(head, final=False)

    def _transcode(self, data: bytes, final: bool) -> bytes:
        if self.encoding == "utf-8":
            return data  # passes through; invalid bytes surface in the parser with a position
        return self._decoder.decode(data, final=final).encode("utf-8")

    def peek(self) -> bytes:
        return self._buffer.lstrip()[:1]

    def read(self, size: int = -1) -> bytes:
        if size == 0:  # ijson probes read(0) to tell bytes from text
            return b""
        while size < 0 or len(self._buffer) < size:
            chunk = self._raw.read(_SNIFF_BYTES if size < 0 else max(size, _SNIFF_BYTES))
            self._buffer += self._transcode(chunk, final=not chunk)
            if not chunk:
                break
        if size < 0:
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


class ValueTooLong(ValueError):
    """A JSON file runs on for more than MAX_LINE_BYTES without a quote."""


class BoundedStrings:
    """What the JSON parser reads, refusing any stretch over MAX_LINE_BYTES without a quote
    before the parser would hold it: the parser builds each string whole, so one enormous
    field (a broken export, a file that is not text) would otherwise be read into memory
    in one piece. Reads are at most 1 MiB (the parser asks for 64 KiB), so a stretch inside
    one read is always shorter than the limit; only stretches across reads are counted."""

    def __init__(self, stream: Utf8Stream):
        self._stream, self._since_quote = stream, 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(min(size, 1 << 20) if size >= 0 else 1 << 20)
        first = data.find(b'"')
        if first < 0:
            self._since_quote += len(data)
        else:
            self._since_quote, run = len(data) - data.rfind(b'"') - 1, self._since_quote + first
            if run > MAX_LINE_BYTES:
                raise ValueTooLong(run)
        if self._since_quote > MAX_LINE_BYTES:
            raise ValueTooLong(self._since_quote)
        return data


@contextmanager
def open_utf8(path: str) -> Iterator[Utf8Stream]:
    loc = resolve(path)
    with loc.fs.open_input_stream(loc.root) as raw:
        yield Utf8Stream(raw)


def text_lines(path: str) -> Iterator[tuple[str, str] | SourceItem]:
    """(location, line) of a UTF-8 or GBK text file; an undecodable line is a failure item,
    and so is a line over MAX_LINE_BYTES (skipped to the next newline, never held whole)."""
    with open_utf8(path) as stream:
        pending, number, skipping = b"", 0, False
        while True:
            try:
                chunk = stream.read(1 << 20)
            except UnicodeDecodeError as exc:
                yield failure(f"{path} after line {number}", "unreadable_file",
                              f"{exc}; lines before it were kept. Re-save the file as UTF-8.")
                return
            end = not chunk
            if skipping:  # the rest of an overlong line
                cut = chunk.find(b"\n")
                if cut < 0:
                    if end:
                        return
                    continue
                chunk, skipping = chunk[cut + 1:], False
            pending += chunk
            lines = pending.split(b"\n")
            pending = lines.pop() if not end else b""
            if end and lines and not lines[-1]:
                lines.pop()  # the empty "line" after a final newline
            for raw in lines:  # at the end of the file, the last (unterminated) line too
                number += 1
                where = f"{path} line {number}"
                if len(raw) > MAX_LINE_BYTES:
                    yield _line_too_long(where, raw)
                    continue
                try:
                    yield where, raw.decode("utf-8").rstrip("\r")
                except UnicodeDecodeError as exc:
                    yield failure(where, "bad_encoding", f"{exc}; re-save the file as UTF-8",
                                  raw.decode("utf-8", "replace"))
            if end:
                return
            if len(pending) > MAX_LINE_BYTES:
                number += 1
                yield _line_too_long(f"{path} line {number}", pending)
                pending, skipping = b"", True


def _line_too_long(where: str, head: bytes) -> SourceItem:
    return failure(where, "line_too_long", f"the line is over {MAX_LINE_BYTES >> 20} MiB (MAX_LINE_BYTES) and is not "
                   "read; no record is that long: check for a missing line break or a file that is not text",
                   head[:2000].decode("utf-8", "replace"))


def json_records(path: str) -> Iterator[tuple[str, Any] | SourceItem]:
    """(location, object) for each record of a JSON array (streamed) or JSON-lines file.

    A record that is not valid JSON (JSON lines) or a file that breaks off (array) yields a
    failure item instead; records before the break are kept.
    """
    with open_utf8(path) as stream:
        # `.jsonl` is JSON lines even when its first record is itself a list.
        if stream.peek() == b"[" and not path.lower().endswith(".jsonl"):
            index = -1
            try:
                for index, obj in enumerate(ijson.items(BoundedStrings(stream), "item", use_float=True)):
                    yield f"{path} record {index}", obj
            except ValueTooLong:
                where = f"{path} after record {index}" if index >= 0 else f"{path} before its first record"
                yield failure(where, "value_too_long", f"the file runs on for over {MAX_LINE_BYTES >> 20} MiB without "
                              "a quote (MAX_LINE_BYTES): no field of a record is that long, so it is not read into "
                              "memory. Records before this point were kept; the rest of the file is not read. Check "
                              "for a missing quote, records run together, or a file that is not text.")
            except (ijson.JSONError, UnicodeDecodeError) as exc:
                where = f"{path} after record {index}" if index >= 0 else f"{path} before its first record"
                yield failure(where, "unreadable_file", f"{exc}. Records before this point were kept; fix or "
                              f"re-export the file (is it truncated, or in an encoding other than UTF-8/GBK?) "
                              f"and start a new run to read the rest.")
            return
    for entry in text_lines(path):
        if isinstance(entry, SourceItem):
            yield entry
            continue
        where, line = entry
        if not line.strip():
            continue
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as exc:
            yield failure(where, "malformed", f"not valid JSON: {exc}", line)


# -- CSV ----------------------------------------------------------------------------------
def csv_rows(path: str) -> Iterator[tuple[str, list[str]] | SourceItem]:
    """(location, cells) of each non-blank row of a UTF-8 or GBK CSV file, the header too.

    The location is `<path> line <n>`, n the line the row starts on. Quoted fields may hold
    commas and newlines. A row with undecodable bytes becomes an `ingest.bad_encoding` item
    (its text decoded with replacement characters as raw); broken quoting or a file that ends
    inside a quoted field ends the file with an `ingest.unreadable_file` item (rows before it
    are kept).
    """
    bad: list[SourceItem] = []  # a bad line seen while reading the current row
    end: list[SourceItem] = []  # the file stopped decoding

    def lines() -> Iterator[str]:
        for entry in text_lines(path):
            if isinstance(entry, SourceItem):
                if entry.reason == "ingest.bad_encoding":
                    bad.append(entry)
                    yield entry.raw + "\n"
                    continue
                if entry.reason == "ingest.line_too_long":  # a CSV cannot resume past a skipped line
                    entry = replace(entry, detail=f"{entry.detail}; rows before it were kept, the rest of the file "
                                    "is not read")
                end.append(entry)
                return
            yield entry[1] + "\n"

    reader = csv.reader(lines(), strict=True)
    last_line = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if end:
                break
            yield failure(f"{path} line {last_line + 1}", "unreadable_file",
                          f"CSV error near line {reader.line_num}: {exc}. Rows before it were kept; fix the quoting "
                          "(or re-export a file that was cut off) and start a new run to read the rest.")
            return
        where, last_line = f"{path} line {last_line + 1}", reader.line_num
        if bad:
            item = bad[0]
            bad.clear()
            yield failure(where, "bad_encoding", f"{item.detail[len(item.location) + 2:]} (at line "
                          f"{item.location.rsplit(' ', 1)[-1]}); the row is not read", ",".join(row))
            continue
        if row:
            yield where, row
    if end:
        yield end[0]


def header_index(header: list[str], aliases: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """Column positions by field name, matching header cells case-insensitively against aliases."""
    cells = [h.strip().lstrip("\ufeff").lower() for h in header]
    found: dict[str, int] = {}
    for field, names in aliases.items():
        for i, cell in enumerate(cells):
            if cell in names:
                found[field] = i
                break
    return found


def cell(row: list[str], index: int | None) -> str:
    return row[index].strip() if index is not None and index < len(row) else ""


def files_under(path: str, suffixes: tuple[str, ...]) -> list[str]:
    """`path` itself if it is a file, else its files with one of `suffixes`, sorted; files
    a link leads out of the folder to are not among them (`escaped_files` reports them)."""
    loc = resolve(path)
    if loc.fs.get_file_info(loc.root).type.name == "File":
        return [path]
    prefix = path.rstrip("/")
    return sorted(prefix + p[len(loc.root):] for p in walk_files(loc, loc.root).files if p.endswith(suffixes))


def escaped_files(path: str) -> list[SourceItem]:
    """One failure per link under the folder `path` that leads out of it (storage.fs.walk_files:
    walked data must lie inside the folder it was found in); none for a file path."""
    loc = resolve(path)
    if loc.fs.get_file_info(loc.root).type.name != "Directory":
        return []
    prefix = path.rstrip("/")
    items = []
    for link, target in walk_files(loc, loc.root).escaped.items():
        where = prefix + link[len(loc.root):]
        if target == MISSING_TARGET:
            items.append(failure(where, "broken_link", "a symbolic link to a missing target; nothing is read "
                                 "from it. Remove the link or restore its target"))
        else:
            items.append(failure(where, "outside_root", f"a symbolic link to {target}, outside the source folder "
                                 f"{path}; files found in a folder must lie inside it, so it is not read. Copy the "
                                 f"file into the folder, or name it (or its folder) as a source path of its own"))
    return items
