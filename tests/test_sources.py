"""The ShareGPT source adapter: formats, encodings, stable keys, and quarantined records."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import pytest

from actors.sources import SOURCE_FORMATS, SourceOptions, SourceRef
from actors.sources.sharegpt import ShareGPT
from schemas import content_key, record_id

SAMPLE = str(files("pipeline") / "demo" / "sample_consultations.json")


def conv(*turns: tuple[str, str]) -> list[dict]:
    return [{"from": role, "value": text} for role, text in turns]


def good(key: str | None = "a", text: str = "我头疼三天了，怎么办？") -> dict:
    record = {"conversations": conv(("human", text), ("gpt", "有没有发烧？"), ("human", "没有发烧。"), ("gpt", "先休息观察。"))}
    if key is not None:
        record["id"] = key
    return record


def write(path: Path, records: list, fmt: str = "array", *, bom: bool = False, encoding: str = "utf-8") -> str:
    if fmt == "array":
        text = json.dumps(records, ensure_ascii=False, indent=1)
    else:
        text = "\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n"
    data = text.encode(encoding)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return str(path)


def read(path: str, source: str = "src", treatment: str = "consultation") -> list:
    return list(ShareGPT().read(SourceRef(source, path, treatment, SourceOptions())))


# -- formats -------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["array", "lines"])
@pytest.mark.parametrize("bom", [False, True], ids=["plain", "bom"])
def test_reads_array_and_json_lines(tmp_path, fmt, bom):
    path = write(tmp_path / "in.json", [good("a"), good("b", "孩子发烧39度了")], fmt, bom=bom)
    items = read(path, treatment="cough")
    assert [i.reason for i in items] == ["", ""]
    a, b = (i.dialogue for i in items)
    assert (a.id, a.source, a.source_key, a.treatment) == (record_id("src", "a"), "src", "a", "cough")
    assert [t.role for t in a.turns] == ["patient", "doctor", "patient", "doctor"]
    assert a.turns[0].text == "我头疼三天了，怎么办？"
    assert b.turns[0].text == "孩子发烧39度了"
    assert items[0].dialogue.source_key == "a"
    where = "record" if fmt == "array" else "line"
    assert items[1].location == f"{path} {where} {1 if fmt == 'array' else 2}"


def test_role_names_and_whitespace_are_normalised(tmp_path):
    record = {"id": 7, "conversations": conv(("User", "  我咳嗽两周了。 "), ("ASSISTANT", "有痰吗？"),
                                            ("patient", "有黄痰。"), ("doctor", "建议拍胸片。"))}
    (item,) = read(write(tmp_path / "in.json", [record]))
    assert item.dialogue.source_key == "7"
    assert [(t.role, t.text) for t in item.dialogue.turns] == [
        ("patient", "我咳嗽两周了。"), ("doctor", "有痰吗？"), ("patient", "有黄痰。"), ("doctor", "建议拍胸片。")]


def test_idx_is_a_key_too(tmp_path):
    record = good(None) | {"idx": "q-9"}
    (item,) = read(write(tmp_path / "in.jsonl", [record], "lines"))
    assert item.dialogue.source_key == "q-9"


def test_leading_whitespace_and_blank_lines(tmp_path):
    array = tmp_path / "a.json"
    array.write_text("\n\n   " + json.dumps([good("a")]), encoding="utf-8")
    lines = tmp_path / "b.jsonl"
    lines.write_text("\n" + json.dumps(good("a")) + "\n\n  \n" + json.dumps(good("b")) + "\n", encoding="utf-8")
    assert [i.dialogue.source_key for i in read(str(array))] == ["a"]
    items = read(str(lines))
    assert [i.dialogue.source_key for i in items] == ["a", "b"]
    assert items[1].location.endswith("line 5")


def test_empty_files(tmp_path):
    (tmp_path / "empty.json").write_bytes(b"")
    (tmp_path / "array.json").write_bytes(b"[]")
    for name in ("empty.json", "array.json"):  # no record: one item naming the file, never nothing
        (item,) = read(str(tmp_path / name))
        assert item.reason == "ingest.empty_file" and item.location == str(tmp_path / name)
        assert "holds no record" in item.detail


def test_json_lines_across_read_chunks(tmp_path):
    """More than the reader's 1 MiB chunk: lines split across chunks are reassembled."""
    records = [good(f"k{i}", "我最近总是失眠，晚上睡不着，白天没精神。" * 8) for i in range(2500)]
    path = write(tmp_path / "big.jsonl", records, "lines")
    assert Path(path).stat().st_size > 1.5 * (1 << 20)
    items = read(path)
    assert [i.reason for i in items if i.reason] == []
    assert [i.dialogue.source_key for i in items] == [f"k{i}" for i in range(2500)]


def test_file_uri(tmp_path):
    path = write(tmp_path / "in.json", [good("a")])
    (item,) = read(f"file://{path}")
    assert item.dialogue.source_key == "a"


def test_sharegpt_is_a_registered_format():
    assert SOURCE_FORMATS["sharegpt"] is ShareGPT


# -- damaged files -----------------------------------------------------------------------

def test_truncated_array_keeps_earlier_records(tmp_path):
    text = json.dumps([good("a"), good("b"), good("c")], ensure_ascii=False)
    path = tmp_path / "cut.json"
    path.write_text(text[: text.rindex('{"conversations"') + 40], encoding="utf-8")
    items = read(str(path))
    assert [i.dialogue.source_key for i in items[:2]] == ["a", "b"]
    (last,) = items[2:]
    assert last.dialogue is None
    assert last.reason == "ingest.unreadable_file"
    assert str(path) in last.detail
    assert "after record 1" in last.detail


@pytest.mark.parametrize("fmt", ["array", "lines"])
def test_gbk_file_is_read_like_utf8(tmp_path, fmt):
    """Chinese corpora are often GBK: the encoding is sniffed and the text decoded."""
    utf8 = read(write(tmp_path / "utf8.json", [good("a"), good("b")], fmt))
    gbk = read(write(tmp_path / "gbk.json", [good("a"), good("b")], fmt, encoding="gbk"))
    assert [i.dialogue for i in gbk] == [i.dialogue for i in utf8]
    assert all(i.dialogue is not None for i in gbk)


@pytest.mark.parametrize("fmt", ["array", "lines"])
def test_undecodable_bytes_are_reported_not_raised(tmp_path, fmt):
    path = tmp_path / "broken.json"
    good_bytes = Path(write(tmp_path / "ok.json", [good("a"), good("b")], fmt)).read_bytes()
    cut = good_bytes.index("孩子".encode()) if "孩子".encode() in good_bytes else len(good_bytes) // 2
    path.write_bytes(good_bytes[:cut] + b"\xff\xfe" + good_bytes[cut:])
    items = read(str(path))
    assert items and any(i.dialogue is None for i in items)
    bad = [i for i in items if i.dialogue is None]
    assert all(str(path) in i.detail for i in bad)


def test_invalid_json_line_is_quarantined_and_reading_goes_on(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(good("a")) + '\n{"id": "b", "conversations": [\n' + json.dumps(good("c")) + "\n",
                    encoding="utf-8")
    items = read(str(path))
    assert [i.reason for i in items] == ["", "ingest.malformed", ""]
    assert items[1].detail.startswith(f"{path} line 2: ")
    assert items[1].raw.startswith('{"id": "b"')


# -- content keys ------------------------------------------------------------------------

def test_records_without_id_get_a_content_key(tmp_path):
    x, y = good(None, "我头疼。"), good(None, "我肚子疼。")
    first = read(write(tmp_path / "one.json", [x, y]))
    second = read(write(tmp_path / "two.jsonl", [good("k"), y, x], "lines"))
    key_x, key_y = (i.dialogue.source_key for i in first)
    assert key_x.startswith("sha:") and key_x != key_y
    assert key_x == json.loads(json.dumps(key_x))  # plain string
    assert [i.dialogue.source_key for i in second] == ["k", key_y, key_x]
    assert second[2].dialogue.id == first[0].dialogue.id == record_id("src", key_x)
    assert key_x == content_key(json.dumps(x["conversations"], ensure_ascii=False, sort_keys=True))


@pytest.mark.parametrize("empty", ["", None])
def test_empty_id_falls_back_to_content_key(tmp_path, empty):
    (item,) = read(write(tmp_path / "in.json", [good(None) | {"id": empty}]))
    assert item.dialogue.source_key.startswith("sha:")


# -- records that cannot be mapped ---------------------------------------------------------

BAD_RECORDS = [
    ("bad_role", {"id": "x", "conversations": conv(("system", "你是医生"), ("human", "头疼"), ("gpt", "休息"))},
     "ingest.bad_role", "turn 0 has role 'system'"),
    ("doctor_first", {"id": "x", "conversations": conv(("gpt", "你好"), ("human", "我头疼"), ("gpt", "休息"))},
     "ingest.bad_role", "first turn must be the patient's"),
    ("not_alternating", {"id": "x", "conversations": conv(("human", "我头疼"), ("gpt", "多久了"), ("gpt", "发烧吗"))},
     "ingest.roles_not_alternating", "turns 1 and 2 are both doctor"),
    ("empty_turn", {"id": "x", "conversations": conv(("human", "我头疼"), ("gpt", "  \n "))},
     "ingest.empty_turn", "turn 1 is empty"),
    ("missing_conversations", {"id": "x", "messages": []}, "ingest.malformed", "'conversations'"),
    ("empty_conversations", {"id": "x", "conversations": []}, "ingest.malformed", "'conversations'"),
    ("value_not_string", {"id": "x", "conversations": [{"from": "human", "value": 3}]},
     "ingest.malformed", "turn 0 needs a string text"),
    ("not_an_object", ["human", "我头疼"], "ingest.malformed", "expected an object, got list"),
]


@pytest.mark.parametrize("fmt", ["array", "lines"])
@pytest.mark.parametrize("record, reason, fragment", [r[1:] for r in BAD_RECORDS], ids=[r[0] for r in BAD_RECORDS])
def test_unmappable_records_are_quarantined(tmp_path, fmt, record, reason, fragment):
    path = write(tmp_path / "in.json", [good("ok-1"), record, good("ok-2")], fmt)
    items = read(path)
    assert [i.reason for i in items] == ["", reason, ""]
    bad = items[1]
    assert bad.dialogue is None
    where = f"{path} record 1" if fmt == "array" else f"{path} line 2"
    assert bad.location == where
    assert bad.detail.startswith(f"{where}: ")
    assert fragment in bad.detail
    assert json.loads(bad.raw) == record


# -- the bundled sample ------------------------------------------------------------------

def test_bundled_sample_reads_cleanly():
    items = read(SAMPLE, source="sample")
    assert len(items) == 60
    assert [i for i in items if i.reason] == []
    keys = [i.dialogue.source_key for i in items]
    assert keys == [f"sample-{n:04d}" for n in range(1, 61)]
    assert len({i.dialogue.id for i in items}) == 60
    assert all(i.dialogue.turns[0].role == "patient" and i.dialogue.turns[-1].role == "doctor" for i in items)
