"""ShareGPT layout: `{id?, idx?, conversations: [{from, value}, ...]}` records, as a JSON
array or JSON lines. HuatuoGPT2-SFT-GPT4-140K and many prepared corpora use it.

A path that names a file is read as it is; a folder is read file by file (every `.json`
and `.jsonl` under it, sorted by path)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from actors.sources.common import (
    SourceFormat,
    SourceItem,
    SourceRef,
    failure,
    files_under,
    json_records,
    make_dialogue,
    map_turns,
    reports_empty_file,
)
from schemas import content_key


def map_sharegpt(obj: Any, ref: SourceRef, where: str, key_prefix: str = "", **fields: Any) -> SourceItem:
    """One ShareGPT record → a dialogue; its key is `key_prefix` + (`id`, else `idx`, else a
    content hash); `fields` are set on the dialogue (e.g. its category)."""
    if not isinstance(obj, dict):
        return failure(where, "malformed", f"expected an object, got {type(obj).__name__}", obj)
    conversations = obj.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        return failure(where, "malformed", "missing or empty 'conversations' list", obj)
    if not all(isinstance(t, dict) for t in conversations):
        return failure(where, "malformed", "every turn must be an object {from, value}", obj)
    turns = map_turns([(t.get("from", ""), t.get("value")) for t in conversations], where, obj)
    if isinstance(turns, SourceItem):
        return turns
    key = obj.get("id") or obj.get("idx")
    source_key = str(key) if key not in (None, "") else content_key(json.dumps(conversations, ensure_ascii=False, sort_keys=True))
    dialogue = make_dialogue(ref, key_prefix + source_key, turns, **fields)
    return SourceItem(where, dialogue=dialogue, raw=json.dumps(obj, ensure_ascii=False))


@reports_empty_file
def read_sharegpt_file(ref: SourceRef, path: str, key_prefix: str = "", **fields: Any) -> Iterator[SourceItem]:
    """Every record of one ShareGPT file (JSON array or JSON lines), mapped or quarantined."""
    for entry in json_records(path):
        yield entry if isinstance(entry, SourceItem) else map_sharegpt(entry[1], ref, entry[0], key_prefix, **fields)


class ShareGPT(SourceFormat):
    format = "sharegpt"

    def read(self, ref: SourceRef) -> Iterator[SourceItem]:
        for path in files_under(ref.path, (".json", ".jsonl")):
            yield from read_sharegpt_file(ref, path)
