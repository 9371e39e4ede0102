"""Aishell-2/3 voice-pool metadata (actors.voices.aishell) on invented fixtures in the real
layouts (tests/fixtures/voices), their GBK and BOM copies, and damaged variants."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from actors.sources.common import SourceItem
from actors.voices.aishell import AGE_GROUPS, Speaker, clip_path, read_speakers, read_transcripts, speaker_of

VOICES = Path(__file__).parent / "fixtures" / "voices"
A2 = VOICES / "aishell2"
A3 = VOICES / "aishell3"
A2_SPK = A2 / "iOS" / "data" / "spk_info.txt"
A2_TRANS = A2 / "iOS" / "data" / "trans.txt"
A3_SPK = A3 / "spk-info.txt"
A3_CONTENT = A3 / "train" / "content.txt"
GBK = VOICES / "variants" / "gbk"
BOM = VOICES / "variants" / "bom"


def speakers(path, corpus: str) -> list:
    return list(read_speakers(str(path), corpus))


def transcripts(path, corpus: str) -> list:
    return list(read_transcripts(str(path), corpus))


def failures(items) -> list[tuple[str, str]]:
    """(location, reason) of each failure item."""
    return [(i.location, i.reason) for i in items if isinstance(i, SourceItem)]


def ok(items) -> list:
    return [i for i in items if not isinstance(i, SourceItem)]


def located(items, path: Path) -> list:
    """Items with their file name taken out of locations, to compare copies of one file."""
    out = []
    for i in items:
        if isinstance(i, SourceItem):
            out.append((i.location.replace(str(path), "<file>"), i.reason,
                        i.detail.replace(str(path), "<file>"), i.raw))
        else:
            out.append(i)
    return out


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


# -- speakers ---------------------------------------------------------------------------------
def test_aishell2_speakers_exact():
    items = speakers(A2_SPK, "aishell2")
    assert ok(items) == [
        Speaker("C0901", "aishell2", "female", "child", "North"),
        Speaker("C0902", "aishell2", "male", "young_adult", "South"),
        Speaker("C0903", "aishell2", "female", "adult", "Other_Areas"),
        Speaker("D0904", "aishell2", "male", "elderly", "North"),
        Speaker("C0905", "aishell2", "female", "unknown", "South"),  # letter E: kept, age unknown
        Speaker("C0906", "aishell2", "male", "young_adult", "North"),  # whitespace-separated line
        Speaker("C0908", "aishell2", "female", "adult", None),  # no accent column
    ]
    assert failures(items) == [
        (f"{A2_SPK} line 10", "ingest.bad_gender"),
        (f"{A2_SPK} line 12", "ingest.malformed"),
        (f"{A2_SPK} line 13", "ingest.duplicate_speaker"),
    ]


def test_aishell3_speakers_exact():
    items = speakers(A3_SPK, "aishell3")
    assert ok(items) == [
        Speaker("SSB0901", "aishell3", "female", "child", "north"),
        Speaker("SSB0902", "aishell3", "male", "young_adult", "south"),
        Speaker("SSB0903", "aishell3", "female", "adult", "others"),  # `Female`
        Speaker("SSB0904", "aishell3", "male", "elderly", "north"),  # `MALE`
        Speaker("SSB0905", "aishell3", "female", "unknown", "south"),  # letter X
        Speaker("SSB0906", "aishell3", "male", "young_adult", "north"),  # lower-case b
    ]
    assert failures(items) == [(f"{A3_SPK} line 10", "ingest.bad_gender")]


def test_failures_name_file_line_and_what_was_wrong():
    bad_gender, malformed, duplicate = [i for i in speakers(A2_SPK, "aishell2") if isinstance(i, SourceItem)]
    assert bad_gender.detail.startswith(f"{A2_SPK} line 10: speaker C0907 has gender '未知'")
    assert bad_gender.raw == "C0907\tC\t未知\tNorth"
    assert bad_gender.dialogue is None
    assert malformed.detail.startswith(f"{A2_SPK} line 12: expected 4 tab-separated columns")
    assert "got 2" in malformed.detail
    assert f"already listed at {A2_SPK} line 4" in duplicate.detail
    (bad3,) = [i for i in speakers(A3_SPK, "aishell3") if isinstance(i, SourceItem)]
    assert bad3.detail.startswith(f"{A3_SPK} line 10: speaker SSB0907 has gender 'unknown'")


@pytest.mark.parametrize(("word", "gender"), [
    ("女", "female"), ("男", "male"), ("female", "female"), ("male", "male"), ("Female", "female"),
    ("FEMALE", "female"), ("Male", "male"), ("f", "female"), ("M", "male"),
])
def test_gender_spellings_normalised(tmp_path, word, gender):
    path = write(tmp_path, "spk_info.txt", f"C0001\tB\t{word}\tNorth\n")
    assert speakers(path, "aishell2") == [Speaker("C0001", "aishell2", gender, "young_adult", "North")]


@pytest.mark.parametrize("word", ["未知", "unknown", "", "fem", "1"])
def test_other_genders_are_failures_not_guesses(tmp_path, word):
    path = write(tmp_path, "spk-info.txt", f"# header\nSSB0001\tC\t{word}\tnorth\nSSB0002\tC\tmale\tsouth\n")
    items = speakers(path, "aishell3")
    assert failures(items) == [(f"{path} line 2", "ingest.bad_gender")]
    assert ok(items) == [Speaker("SSB0002", "aishell3", "male", "adult", "south")]


def test_age_letters_map_like_the_official_scripts(tmp_path):
    assert AGE_GROUPS == {"A": "child", "B": "young_adult", "C": "adult", "D": "elderly"}
    letters = ["A", "B", "C", "D", "a", "d", "E", "Z", "AB", "", "?"]
    text = "".join(f"S{i:03d}\t{letter}\tfemale\n" for i, letter in enumerate(letters))
    items = speakers(write(tmp_path, "spk.txt", text), "aishell2")
    assert [s.age_group for s in items] == ["child", "young_adult", "adult", "elderly", "child", "elderly",
                                           "unknown", "unknown", "unknown", "unknown", "unknown"]


def test_comments_blank_lines_and_a_header_row_are_skipped(tmp_path):
    text = ("spk_id\tage_group\tgender\taccent\n#C0001\tA\tfemale\tNorth\n\n  \n  # indented comment\n"
            "C0002\tA\tfemale\tNorth\nC0003\tB\tgender\tNorth\n")
    path = write(tmp_path, "spk_info.txt", text)
    items = speakers(path, "aishell2")
    assert ok(items) == [Speaker("C0002", "aishell2", "female", "child", "North")]
    assert failures(items) == [(f"{path} line 7", "ingest.bad_gender")]  # a header only before speakers


def test_column_counts(tmp_path):
    text = "C0001\n\tB\tmale\tNorth\nC0002\tB\tmale\tNorth\textra\nC0003  B  male  Other Areas\nC0004\tB\tmale\t\n"
    path = write(tmp_path, "spk_info.txt", text)
    items = speakers(path, "aishell2")
    assert failures(items) == [(f"{path} line {n}", "ingest.malformed") for n in (1, 2, 3)]
    assert ok(items) == [Speaker("C0003", "aishell2", "male", "young_adult", "Other Areas"),
                         Speaker("C0004", "aishell2", "male", "young_adult", None)]


# -- transcripts ------------------------------------------------------------------------------
def test_aishell2_transcripts_exact():
    items = transcripts(A2_TRANS, "aishell2")
    assert ok(items) == [
        ("IC0901W0001", "请问附近有药店吗"),
        ("IC0901W0002", "我想挂一个内科的号"),
        ("IC0902W0001", "明天上午九点复查CT"),  # Latin letters kept: they are spoken
        ("ID0904W0003", "医生说要多喝水"),
        ("IC0903W0001", "今天有点发烧"),  # space instead of a tab
    ]
    assert failures(items) == [(f"{A2_TRANS} line 5", "ingest.empty_transcript"),
                               (f"{A2_TRANS} line 8", "ingest.bad_utterance_id")]


def test_aishell3_transcripts_drop_pinyin_keep_characters_in_order():
    items = transcripts(A3_CONTENT, "aishell3")
    assert ok(items) == [
        ("SSB09010001", "胃不舒服"),
        ("SSB09010002", "我想量血压"),
        ("SSB09020001", "女儿做B超"),  # `B` has no tone digit: not pinyin
        ("SSB09040001", "头疼"),
    ]
    assert failures(items) == [(f"{A3_CONTENT} line 4", "ingest.empty_transcript"),
                               (f"{A3_CONTENT} line 6", "ingest.bad_utterance_id")]
    only_pinyin = [i for i in items if isinstance(i, SourceItem)][0]
    assert only_pinyin.detail.startswith(f"{A3_CONTENT} line 4: utterance SSB09030001 has no transcript text "
                                         "left once its pinyin is removed")
    assert only_pinyin.raw == "SSB09030001.wav\tni3 hao3 yi1 sheng1"


def test_transcript_edge_cases(tmp_path):
    text = "SSB00010001.wav\n SSB00010002.WAV\t\t吕 lv3 绿 lü4 儿 r5 ，\nSSB00010003\t好 hao3\n"
    path = write(tmp_path, "content.txt", text)
    items = transcripts(path, "aishell3")
    assert failures(items) == [(f"{path} line 1", "ingest.empty_transcript")]
    assert ok(items) == [("SSB00010002", "吕绿儿，"), ("SSB00010003", "好")]


# -- encodings --------------------------------------------------------------------------------
def test_encoding_copies_are_faithful():
    assert (GBK / "spk_info.txt").read_bytes().decode("gbk") == A2_SPK.read_text("utf-8")
    assert (GBK / "content.txt").read_bytes().decode("gbk") == A3_CONTENT.read_text("utf-8")
    assert (BOM / "spk-info.txt").read_bytes() == b"\xef\xbb\xbf" + A3_SPK.read_bytes()
    assert (BOM / "trans.txt").read_bytes() == b"\xef\xbb\xbf" + A2_TRANS.read_bytes().replace(b"\n", b"\r\n")


@pytest.mark.parametrize(("copy", "original", "corpus", "reader"), [
    (GBK / "spk_info.txt", A2_SPK, "aishell2", speakers),
    (GBK / "content.txt", A3_CONTENT, "aishell3", transcripts),
    (BOM / "spk-info.txt", A3_SPK, "aishell3", speakers),  # BOM before the first `#`
    (BOM / "trans.txt", A2_TRANS, "aishell2", transcripts),  # BOM before the first id, CRLF
])
def test_gbk_and_bom_copies_read_like_utf8(copy, original, corpus, reader):
    expected = located(reader(original, corpus), original)
    assert located(reader(copy, corpus), copy) == expected
    assert ok(expected)


def test_undecodable_line_is_a_failure_and_the_rest_is_read(tmp_path):
    path = tmp_path / "spk_info.txt"
    path.write_bytes("C0001\tA\t女\tNorth\n".encode() + b"C0002\tB\t\xff\xfe\tNorth\n" + "C0003\tC\t男\tSouth\n".encode())
    items = speakers(path, "aishell2")
    assert failures(items) == [(f"{path} line 2", "ingest.bad_encoding")]
    assert [s.speaker_id for s in ok(items)] == ["C0001", "C0003"]


def test_garbage_never_raises(tmp_path):
    rng = random.Random(7)
    for n in range(20):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        path = tmp_path / f"g{n}.txt"
        path.write_bytes(data)
        for corpus in ("aishell2", "aishell3"):
            for item in [*speakers(path, corpus), *transcripts(path, corpus)]:
                assert isinstance(item, (Speaker, SourceItem, tuple))


# -- clip paths -------------------------------------------------------------------------------
def test_clip_paths():
    assert clip_path(str(A2), "aishell2", "IC0901W0001") == f"{A2}/iOS/data/wav/C0901/IC0901W0001.wav"
    assert clip_path("s3://bucket/AISHELL-2/", "aishell2", "ID0904W0003") == \
        "s3://bucket/AISHELL-2/iOS/data/wav/D0904/ID0904W0003.wav"
    assert clip_path(str(A3), "aishell3", "SSB09010001") == f"{A3}/train/wav/SSB0901/SSB09010001.wav"
    assert clip_path("/data/aishell3", "aishell3", "SSB09010001.wav", split="test") == \
        "/data/aishell3/test/wav/SSB0901/SSB09010001.wav"
    assert speaker_of("aishell2", "IC0901W0001") == "C0901"
    assert speaker_of("aishell3", "SSB09010001") == "SSB0901"


def test_every_parsed_transcript_has_a_clip_path():
    for path, corpus, root in ((A2_TRANS, "aishell2", A2), (A3_CONTENT, "aishell3", A3)):
        for utt, _ in ok(transcripts(path, corpus)):
            assert clip_path(str(root), corpus, utt).endswith(f"/{speaker_of(corpus, utt)}/{utt}.wav")


def test_caller_errors_raise():
    with pytest.raises(ValueError, match="unknown voice corpus"):
        list(read_speakers(str(A2_SPK), "aishell1"))
    with pytest.raises(ValueError, match="unknown voice corpus"):
        list(read_transcripts(str(A2_TRANS), "aishell"))
    with pytest.raises(ValueError, match="not an aishell2 utterance id"):
        clip_path("/x", "aishell2", "SSB09010001")
    with pytest.raises(ValueError, match="split"):
        clip_path("/x", "aishell3", "SSB09010001", split="dev")
