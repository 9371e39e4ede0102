"""Source adapters: read a corpus file, yield normalised dialogues or quarantined items.

An adapter streams (a JSON array is parsed incrementally, never loaded whole) and never
raises on bad input: a record it cannot map becomes an item with a reason code and the
location (file and record number), so ingestion reconciles as read = written + rejected.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import ijson

from schemas import SourceDialogue, Treatment, Turn, content_key, record_id
from storage.fs import resolve

PATIENT_ROLES = frozenset({"human", "user", "patient"})
DOCTOR_ROLES = frozenset({"gpt", "assistant", "doctor"})


@dataclass(frozen=True)
class SourceItem:
    """One record read from a source: a dialogue, or why it could not be mapped."""

    location: str
    dialogue: SourceDialogue | None = None
    reason: str = ""
    detail: str = ""
    raw: str = ""

    @property
    def key(self) -> str:
        return self.dialogue.source_key if self.dialogue else self.location


class _Stream:
    """A binary stream with a pushed-back prefix: drops a UTF-8 byte-order mark (which
    ijson rejects) and lets the reader peek at the first significant byte."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        head = stream.read(3)
        head = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
        # Leading whitespace is kept (it holds newlines that JSON-lines numbering counts).
        while not head.strip() and (more := stream.read(1)):
            head += more
        self._head = head

    def peek(self) -> bytes:
        return self._head.lstrip()[:1]

    def read(self, size: int = -1) -> bytes:
        if size == 0:  # ijson probes read(0) to tell bytes from text
            return b""
        head, self._head = self._head, b""
        if size is None or size < 0:
            return head + self._stream.read()
        return head + self._stream.read(max(size - len(head), 0))


def _map_sharegpt(obj: Any, source: str, treatment: Treatment, where: str) -> SourceItem:
    raw = json.dumps(obj, ensure_ascii=False, default=str)
    fail = lambda reason, detail: SourceItem(where, reason=f"ingest.{reason}", detail=f"{where}: {detail}", raw=raw)  # noqa: E731
    if not isinstance(obj, dict):
        return fail("malformed", f"expected an object, got {type(obj).__name__}")
    conversations = obj.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        return fail("malformed", "missing or empty 'conversations' list")
    turns: list[Turn] = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            return fail("malformed", f"turn {i} needs a string 'value'")
        role = str(turn.get("from", "")).lower()
        if role not in PATIENT_ROLES | DOCTOR_ROLES:
            return fail("bad_role", f"turn {i} has role {turn.get('from')!r}; expected human/user or gpt/assistant")
        if not turn["value"].strip():
            return fail("empty_turn", f"turn {i} is empty")
        turns.append(Turn(role="patient" if role in PATIENT_ROLES else "doctor", text=turn["value"].strip()))
    if turns[0].role != "patient":
        return fail("bad_role", "the first turn must be the patient's")
    for i in range(1, len(turns)):
        if turns[i].role == turns[i - 1].role:
            return fail("roles_not_alternating", f"turns {i - 1} and {i} are both {turns[i].role}")
    key = obj.get("id") or obj.get("idx")
    source_key = str(key) if key not in (None, "") else content_key(json.dumps(conversations, ensure_ascii=False, sort_keys=True))
    dialogue = SourceDialogue(
        id=record_id(source, source_key),
        source=source,
        source_key=source_key,
        treatment=treatment,
        turns=turns,
    )
    return SourceItem(where, dialogue=dialogue, raw=raw)


def read_sharegpt(source: str, path: str, treatment: Treatment) -> Iterator[SourceItem]:
    """A ShareGPT file: a JSON array (streamed) or JSON lines of {id?, conversations}."""
    loc = resolve(path)
    with loc.fs.open_input_stream(loc.root) as raw:
        stream = _Stream(raw)
        if stream.peek() == b"[":
            yield from _read_array(source, path, treatment, stream)
        else:
            yield from _read_lines(source, path, treatment, stream)


def _read_array(source: str, path: str, treatment: Treatment, stream: Any) -> Iterator[SourceItem]:
    index = -1
    try:
        for index, obj in enumerate(ijson.items(stream, "item", use_float=True)):
            yield _map_sharegpt(obj, source, treatment, f"{path} record {index}")
    except (ijson.JSONError, UnicodeDecodeError) as exc:
        where = f"{path} after record {index}" if index >= 0 else f"{path} before its first record"
        yield SourceItem(
            where,
            reason="ingest.unreadable_file",
            detail=f"{where}: {exc}. Records before this point were kept; fix or re-export "
            f"the file (is it truncated or not UTF-8?) and start a new run to read the rest.",
        )


def _read_lines(source: str, path: str, treatment: Treatment, stream: Any) -> Iterator[SourceItem]:
    buffer = b""
    line_no = 0
    while True:
        chunk = stream.read(1 << 20)
        buffer += chunk
        lines = buffer.split(b"\n")
        buffer = lines.pop() if chunk else b""
        for line in lines:
            line_no += 1
            if not line.strip():
                continue
            where = f"{path} line {line_no}"
            try:
                obj = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                yield SourceItem(where, reason="ingest.malformed", detail=f"{where}: {exc}", raw=line[:10000].decode("utf-8", "replace"))
                continue
            yield _map_sharegpt(obj, source, treatment, where)
        if not chunk:
            return


SourceReader = Callable[[str, str, Treatment], Iterator[SourceItem]]
SOURCE_FORMATS: dict[str, SourceReader] = {"sharegpt": read_sharegpt}
