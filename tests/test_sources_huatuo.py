"""The HuatuoGPT2 adapters: file selection (both spellings, options), records, damaged files,
and ids that do not depend on record order, file spelling or how the path was given."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from actors.sources import SourceOptions, SourceRef
from actors.sources.huatuo import HuatuoPretrain, HuatuoPretrainOptions, HuatuoSFT
from schemas import record_id

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sources" / "huatuo"
SFT_DIR = FIXTURES / "HuatuoGPT2-SFT-GPT4-140K"
SFT_FILE = SFT_DIR / "HuatuoGPT2-GPT4-SFT-140K.json"
PRETRAIN_DIR = FIXTURES / "HuatuoGPT2-Pretraining-Instruction"
DATA = PRETRAIN_DIR / "data"
ENCY = DATA / "HuatuoGPT2_Pretrain_Meidcal_Encyclopedia_cn.json"
BOOKS = DATA / "HuatuoGPT2_Pretrain_Medical_Books_cn.json"
MALFORMED = FIXTURES / "malformed"
SFT_KEYS = [f"fx_sft_{i:04d}" for i in range(1, 6)]
ENCY_KEYS = [f"Encyclopedia_cn:fx_ency_cn_{i:04d}" for i in range(1, 4)]
BOOKS_KEYS = [f"Books_cn:fx_books_cn_{i:04d}" for i in range(1, 3)]


def sft(path: Path | str, source: str = "huatuo_sft") -> list:
    return list(HuatuoSFT().read(SourceRef(source, str(path), HuatuoSFT.default_treatment, SourceOptions())))


def pretrain(path: Path | str, source: str = "huatuo_pre", **options) -> list:
    ref = SourceRef(source, str(path), HuatuoPretrain.default_treatment, HuatuoPretrainOptions(**options))
    return list(HuatuoPretrain().read(ref))


def keys(items: list) -> list[str]:
    return [i.dialogue.source_key for i in items]


def reasons(items: list) -> list[str]:
    return [i.reason for i in items]


def copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def test_formats_and_default_treatments():
    assert (HuatuoSFT.format, HuatuoSFT.default_treatment) == ("huatuo_sft", "single_turn_qa")
    assert (HuatuoPretrain.format, HuatuoPretrain.default_treatment) == ("huatuo_pretrain", "encyclopedia")


# -- HuatuoGPT2-SFT ------------------------------------------------------------------------

@pytest.mark.parametrize("path", [SFT_DIR, SFT_FILE, FIXTURES / "sft_repo_spelling",
                                  FIXTURES / "sft_repo_spelling" / "HuatuoGPT2-SFT-GPT4-140K.json"],
                         ids=["repo_folder", "file", "repo_spelling_folder", "repo_spelling_file"])
def test_sft_reads_either_spelling(path):
    items = sft(path)
    assert reasons(items) == [""] * 5
    assert keys(items) == SFT_KEYS
    first = items[0].dialogue
    assert (first.id, first.source, first.treatment) == (record_id("huatuo_sft", "fx_sft_0001"), "huatuo_sft", "single_turn_qa")
    assert [t.role for t in first.turns] == ["patient", "doctor"]
    assert first.turns[0].text == "我家小狗舔了我手上的伤口，需要去打针吗？"
    assert first.category is None
    assert items[4].location.endswith(".json record 4")


def test_sft_json_lines_revision():
    for path in (FIXTURES / "sft_jsonl", FIXTURES / "sft_jsonl" / "HuatuoGPT2_sft_instruct_GPT4.jsonl"):
        items = sft(path)
        assert keys(items) == ["fx_old_0001", "fx_old_0002", "fx_old_0003"]
        assert items[2].location.endswith("HuatuoGPT2_sft_instruct_GPT4.jsonl line 3")


def test_sft_folder_with_several_names_reads_one(tmp_path):
    """The published file wins over a renamed copy and the older revision: never twice."""
    copy(FIXTURES / "sft_jsonl" / "HuatuoGPT2_sft_instruct_GPT4.jsonl", tmp_path / "HuatuoGPT2_sft_instruct_GPT4.jsonl")
    copy(SFT_FILE, tmp_path / "HuatuoGPT2-SFT-GPT4-140K.json")
    assert keys(sft(tmp_path)) == SFT_KEYS  # the repo spelling before the older revision
    copy(SFT_FILE, tmp_path / "nested" / "HuatuoGPT2-GPT4-SFT-140K.json")
    items = sft(tmp_path)
    assert keys(items) == SFT_KEYS
    assert "/nested/HuatuoGPT2-GPT4-SFT-140K.json record 0" in items[0].location


def test_sft_folder_without_the_file(tmp_path):
    (tmp_path / "other.json").write_text("[]", encoding="utf-8")
    for path in (tmp_path, tmp_path / "absent"):
        (item,) = sft(path)
        assert item.dialogue is None and item.reason == "ingest.missing_file"
        assert str(path) in item.detail
        assert "HuatuoGPT2-GPT4-SFT-140K.json" in item.detail and "HuatuoGPT2_sft_instruct_GPT4.jsonl" in item.detail


# -- damaged SFT files ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sft_bom.json", "sft_gbk.json"])
def test_bom_and_gbk_read_like_utf8(name):
    clean = sft(SFT_FILE)
    items = sft(MALFORMED / name)
    assert reasons(items) == [""] * 5
    assert [i.dialogue for i in items] == [i.dialogue for i in clean]


def test_gbk_fixture_is_really_gbk():
    data = (MALFORMED / "sft_gbk.json").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    assert json.loads(data.decode("gbk"))[0]["id"] == "fx_sft_0001"
    assert (MALFORMED / "sft_bom.json").read_bytes().startswith(b"\xef\xbb\xbf")


def test_truncated_array_keeps_earlier_records():
    path = MALFORMED / "sft_truncated.json"
    items = sft(path)
    assert keys(items[:2]) == SFT_KEYS[:2]
    (last,) = items[2:]
    assert last.dialogue is None and last.reason == "ingest.unreadable_file"
    assert last.location == f"{path} after record 1"
    assert last.detail.startswith(f"{path} after record 1: ")


def test_bad_role_is_quarantined_with_file_and_record():
    path = MALFORMED / "sft_bad_role.json"
    items = sft(path)
    assert reasons(items) == ["", "ingest.bad_role", ""]
    bad = items[1]
    assert bad.dialogue is None
    assert bad.location == f"{path} record 1"
    assert bad.detail.startswith(f"{path} record 1: ") and "'system'" in bad.detail
    assert json.loads(bad.raw)["id"] == "fx_bad_0002"
    assert keys([items[0], items[2]]) == ["fx_sft_0001", "fx_sft_0002"]


@pytest.mark.parametrize("content", [b"", b"{", b'{"id": 1}', b"[1, [], {\"conversations\": 3}]", b"\xff\xfe\x00garbage"],
                         ids=["empty", "open_brace", "object_not_array", "wrong_types", "binary"])
def test_odd_files_never_raise(tmp_path, content):
    path = tmp_path / "HuatuoGPT2-GPT4-SFT-140K.json"
    path.write_bytes(content)
    for reader in (sft, pretrain):
        items = reader(path)
        assert all(i.dialogue is None and i.reason.startswith("ingest.") and str(path) in i.detail for i in items)


# -- HuatuoGPT2-Pretraining-Instruction ------------------------------------------------------

@pytest.mark.parametrize("path", [PRETRAIN_DIR, DATA], ids=["repo_folder", "data_folder"])
def test_pretrain_default_selection(path):
    """Encyclopedia (spelt Meidcal) and Books (spelt Medical), cn only, in `corpora` order."""
    items = pretrain(path)
    assert reasons(items) == [""] * 5
    assert keys(items) == ENCY_KEYS + BOOKS_KEYS
    assert [i.dialogue.category for i in items] == ["Encyclopedia"] * 3 + ["Books"] * 2
    assert {i.dialogue.treatment for i in items} == {"encyclopedia"}
    assert all("_en" not in i.location and "Literature" not in i.location for i in items)
    assert items[3].location == f"{BOOKS} record 0"
    two_pairs = items[1].dialogue
    assert [t.role for t in two_pairs.turns] == ["patient", "doctor", "patient", "doctor"]  # kept as mapped
    assert two_pairs.id == record_id("huatuo_pre", "Encyclopedia_cn:fx_ency_cn_0002")


def test_pretrain_options_select_corpora_and_language():
    assert keys(pretrain(PRETRAIN_DIR, corpora=["Books"])) == BOOKS_KEYS
    assert keys(pretrain(PRETRAIN_DIR, corpora=["books", "Literature"])) == BOOKS_KEYS + ["Literature_cn:fx_lit_cn_0001"]
    en = pretrain(PRETRAIN_DIR, corpora=["Encyclopedia"], lang="en")
    assert keys(en) == ["Encyclopedia_en:fx_ency_en_0001"]
    assert en[0].dialogue.turns[0].text == "What is a stye?"


def test_pretrain_missing_corpus_is_one_failure():
    items = pretrain(PRETRAIN_DIR, corpora=["Encyclopedia", "Web_Corpus", "Books"])
    assert reasons(items) == [""] * 3 + ["ingest.missing_file"] + [""] * 2
    missing = items[3]
    assert missing.dialogue is None
    assert missing.location == f"{PRETRAIN_DIR} [Web_Corpus_cn]"
    assert "HuatuoGPT2_Pretrain_Meidcal_Web_Corpus_cn.json" in missing.detail
    assert "HuatuoGPT2_Pretrain_Medical_Web_Corpus_cn.json" in missing.detail
    (books_en,) = [i for i in pretrain(PRETRAIN_DIR, lang="en") if i.dialogue is None]
    assert "HuatuoGPT2_Pretrain_Meidcal_Books_en.json" in books_en.detail


def test_pretrain_both_spellings_in_one_folder_read_once(tmp_path):
    copy(ENCY, tmp_path / "data" / "HuatuoGPT2_Pretrain_Meidcal_Encyclopedia_cn.json")
    copy(ENCY, tmp_path / "data" / "HuatuoGPT2_Pretrain_Medical_Encyclopedia_cn.json")
    copy(BOOKS, tmp_path / "data" / "HuatuoGPT2_Pretrain_Meidcal_Books_cn.json")
    items = pretrain(tmp_path)
    assert keys(items) == ENCY_KEYS + BOOKS_KEYS
    assert "Meidcal_Encyclopedia" in items[0].location


def test_pretrain_file_path_is_read_whatever_the_options():
    lit = DATA / "HuatuoGPT2_Pretrain_Meidcal_Literature_cn.json"
    (item,) = pretrain(lit)  # not among the default corpora, but named explicitly
    assert (item.dialogue.source_key, item.dialogue.category) == ("Literature_cn:fx_lit_cn_0001", "Literature")


def test_pretrain_ids_do_not_depend_on_spelling_or_path(tmp_path):
    by_folder = {i.dialogue.source_key: i.dialogue for i in pretrain(PRETRAIN_DIR)}
    by_file = {i.dialogue.source_key: i.dialogue for i in pretrain(ENCY) + pretrain(BOOKS)}
    respelt = copy(BOOKS, tmp_path / "HuatuoGPT2_Pretrain_Meidcal_Books_cn.json")
    assert by_folder == by_file
    assert [i.dialogue for i in pretrain(respelt)] == [by_folder[k] for k in BOOKS_KEYS]


def test_pretrain_same_upstream_id_in_two_corpora_differs(tmp_path):
    record = {"id": "0", "conversations": [{"from": "human", "value": "什么是贫血？"}, {"from": "gpt", "value": "血红蛋白低于正常。"}]}
    for corpus in ("Encyclopedia", "Books"):
        (tmp_path / f"HuatuoGPT2_Pretrain_Meidcal_{corpus}_cn.json").write_text(json.dumps([record]), encoding="utf-8")
    a, b = pretrain(tmp_path)
    assert a.dialogue.id != b.dialogue.id
    assert (a.dialogue.source_key, b.dialogue.source_key) == ("Encyclopedia_cn:0", "Books_cn:0")


def test_pretrain_file_with_another_name_keeps_plain_keys(tmp_path):
    path = copy(BOOKS, tmp_path / "books.json")
    items = pretrain(path)
    assert keys(items) == ["fx_books_cn_0001", "fx_books_cn_0002"]
    assert {i.dialogue.category for i in items} == {None}


def test_pretrain_bad_record_names_file_and_record(tmp_path):
    path = copy(MALFORMED / "sft_bad_role.json", tmp_path / "data" / "HuatuoGPT2_Pretrain_Meidcal_Books_cn.json")
    copy(ENCY, tmp_path / "data" / ENCY.name)
    items = pretrain(tmp_path)
    assert reasons(items) == [""] * 3 + ["", "ingest.bad_role", ""]
    assert items[4].location == f"{path} record 1"
    assert items[5].dialogue.category == "Books"


@pytest.mark.parametrize("options, fragment", [
    ({"corpora": ["Wiki"]}, "unknown corpus 'Wiki'"),
    ({"corpora": []}, "at least 1"),
    ({"lang": "zh"}, "'cn' or 'en'"),
    ({"langs": "cn"}, "Extra inputs"),
])
def test_pretrain_options_are_validated(options, fragment):
    with pytest.raises(ValidationError, match=fragment):
        HuatuoPretrainOptions(**options)


def test_pretrain_options_canonicalise_and_dedupe():
    assert HuatuoPretrainOptions(corpora=["books", "BOOKS", "web_corpus"]).corpora == ["Books", "Web_Corpus"]
    assert HuatuoPretrainOptions().model_dump() == {"corpora": ["Encyclopedia", "Books"], "lang": "cn"}


# -- ids -----------------------------------------------------------------------------------

def test_ids_are_stable_and_independent_of_record_order(tmp_path):
    records = json.loads(SFT_FILE.read_text(encoding="utf-8"))
    records.append({"conversations": records[0]["conversations"][:1] + [{"from": "gpt", "value": "没有编号的回答。"}]})
    forward = copy(SFT_FILE, tmp_path / "a" / SFT_FILE.name)
    forward.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    backward = tmp_path / "b" / "HuatuoGPT2_sft_instruct_GPT4.jsonl"
    backward.parent.mkdir()
    backward.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in reversed(records)), encoding="utf-8")
    one = {i.dialogue.id: i.dialogue for i in sft(tmp_path / "a")}
    two = {i.dialogue.id: i.dialogue for i in sft(tmp_path / "b")}
    assert one == two and len(one) == 6
    assert record_id("huatuo_sft", "fx_sft_0003") in one
    assert sum(d.source_key.startswith("sha:") for d in one.values()) == 1
    assert [i.dialogue.id for i in sft(SFT_FILE)] == [i.dialogue.id for i in sft(SFT_FILE)]

    # Pretraining: a reversed file gives the same ids too.
    ency = json.loads(ENCY.read_text(encoding="utf-8"))
    rev = tmp_path / "c" / ENCY.name
    rev.parent.mkdir()
    rev.write_text(json.dumps(ency[::-1], ensure_ascii=False), encoding="utf-8")
    assert sorted(i.dialogue.id for i in pretrain(rev)) == sorted(i.dialogue.id for i in pretrain(ENCY))
