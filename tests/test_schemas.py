"""Record models, the Arrow schemas derived from them, and deterministic ids / randomness."""

from __future__ import annotations

import enum
import random
from collections import Counter
from typing import Literal, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas import (
    AudioData,
    CoughSplice,
    QCScores,
    Rejection,
    SourceDialogue,
    SynthesizedTurn,
    Turn,
    VoiceChoice,
    VoiceReference,
    age_group_of,
    arrow_schema,
    arrow_type,
    content_key,
    from_table,
    record_id,
    rng_for,
    seed_for,
    shard_of,
    to_table,
)
from schemas.records import Record

AUDIO_BYTES = bytes(range(256)) + b"fLaC\x00\xff\xfe"  # not UTF-8, contains NUL


def field_summary(schema: pa.Schema) -> dict[str, tuple[pa.DataType, bool]]:
    return {f.name: (f.type, f.nullable) for f in schema}


def dialogue(key: str = "k1", **overrides) -> SourceDialogue:
    fields = dict(
        id=record_id("src", key),
        source="src",
        source_key=key,
        turns=[
            Turn(role="patient", text="我头疼三天了。"),
            Turn(role="doctor", text="有没有发烧？", speech_text="有没有发烧？"),
        ],
    )
    return SourceDialogue(**(fields | overrides))


def synthesized(i: int = 0, path: str | None = None) -> SynthesizedTurn:
    return SynthesizedTurn(
        id=f"d-{i}", dialogue_id="d", turn_index=i, text="我头疼。",
        audio=AudioData(bytes=AUDIO_BYTES + bytes([i]), path=path),
        sample_rate=16000, duration_s=1.25, engine="espeak", role="patient",
        voice=VoiceChoice(engine="random_timbre", match="none", seed=2**62 + i),
        coughs=[CoughSplice(clip_id="c1", offset_s=0.5, duration_s=0.3)] if i else [],
        qc=QCScores(duration_s=1.25, spoken_chars=3, s_per_char=None if i else 0.4, clipped=0.0,
                    leading_silence_s=0.1, trailing_silence_s=0.2),
    )


# -- derived schemas -------------------------------------------------------------------

def test_turn_schema_optional_fields_are_nullable():
    assert field_summary(arrow_schema(Turn)) == {
        "role": (pa.string(), False),
        "text": (pa.string(), False),
        "speech_text": (pa.string(), True),
    }


def test_source_dialogue_schema():
    fields = field_summary(arrow_schema(SourceDialogue))
    assert fields["id"] == (pa.string(), False)
    assert fields["treatment"] == (pa.string(), False)  # Literal of str → string
    assert fields["gender"] == (pa.string(), False)
    assert fields["category"] == (pa.string(), True)
    assert fields["age"] == (pa.int64(), True)
    turns_type, turns_nullable = fields["turns"]
    assert not turns_nullable
    assert pa.types.is_list(turns_type)
    assert not turns_type.value_field.nullable
    item = turns_type.value_type
    assert pa.types.is_struct(item)
    assert [(f.name, f.type, f.nullable) for f in item] == [
        ("role", pa.string(), False),
        ("text", pa.string(), False),
        ("speech_text", pa.string(), True),
    ]


def test_audio_is_hugging_face_audio_layout():
    audio_type, nullable = field_summary(arrow_schema(SynthesizedTurn))["audio"]
    assert not nullable
    assert pa.types.is_struct(audio_type)
    assert [(f.name, f.type) for f in audio_type] == [("bytes", pa.binary()), ("path", pa.string())]
    assert audio_type.field("path").nullable
    assert arrow_schema(AudioData).names == ["bytes", "path"]


@pytest.mark.parametrize("model, expected", [
    (Rejection, {"id": (pa.string(), False), "stage": (pa.string(), False), "reason": (pa.string(), False),
                 "detail": (pa.string(), False), "raw_output": (pa.string(), True),
                 "record_json": (pa.string(), False)}),
])
def test_flat_model_schemas(model, expected):
    assert field_summary(arrow_schema(model)) == expected


def test_voice_reference_and_synthesized_scalars():
    voice = field_summary(arrow_schema(VoiceReference))
    assert voice["duration_s"] == (pa.float64(), False)
    assert voice["accent"] == (pa.string(), True)
    synth = field_summary(arrow_schema(SynthesizedTurn))
    assert synth["turn_index"] == (pa.int64(), False)
    assert synth["voice"][0].field("seed").type == pa.int64()
    assert synth["voice"][0].field("clip_id").nullable
    assert pa.types.is_list(synth["coughs"][0])


def test_schema_is_cached_per_model():
    assert arrow_schema(SourceDialogue) is arrow_schema(SourceDialogue)


class Colour(enum.Enum):
    RED = "red"


@pytest.mark.parametrize("annotation, expected", [
    (str, pa.string()),
    (int, pa.int64()),
    (float, pa.float64()),
    (bool, pa.bool_()),
    (bytes, pa.binary()),
    (Literal["a", "b"], pa.string()),
    (Literal[1, 2], pa.int64()),
    (Colour, pa.string()),
    (list[int], pa.list_(pa.field("item", pa.int64(), nullable=False))),
    (list[Optional[str]], pa.list_(pa.field("item", pa.string(), nullable=True))),
    (tuple[str, ...], pa.list_(pa.field("item", pa.string(), nullable=False))),
])
def test_arrow_type_of_annotations(annotation, expected):
    assert arrow_type(annotation) == expected


class WithDict(Record):
    labels: dict[str, int]


class WithUnion(Record):
    value: int | str


class WithOptionalUnion(Record):
    value: int | str | None = None


class WithMixedLiteral(Record):
    value: Literal[1, "one"]


class WithNestedDict(Record):
    inner: list[WithDict]


@pytest.mark.parametrize("model", [WithDict, WithUnion, WithOptionalUnion, WithMixedLiteral, WithNestedDict])
def test_unmappable_annotations_are_refused(model):
    with pytest.raises(TypeError):
        arrow_schema(model)


def test_nested_optional_model_is_nullable_struct():
    class Outer(Record):
        turn: Turn | None = None

    (field,) = arrow_schema(Outer)
    assert field.nullable and pa.types.is_struct(field.type)


# -- table round trips ----------------------------------------------------------------

def test_dialogue_round_trip_keeps_nested_turns_and_nulls():
    records = [dialogue("k1"), dialogue("k2", category="内科", age=42, gender="female", treatment="cough")]
    table = to_table(records, SourceDialogue)
    assert table.schema == arrow_schema(SourceDialogue)
    assert table.num_rows == 2
    assert table.column("age").to_pylist() == [None, 42]
    assert from_table(table, SourceDialogue) == records


def test_audio_bytes_round_trip_through_parquet(tmp_path):
    records = [synthesized(0, path=None), synthesized(1, path="d-1.flac")]
    table = to_table(records, SynthesizedTurn)
    assert table.column("audio").type.field("bytes").type == pa.binary()
    pq.write_table(table, tmp_path / "t.parquet")
    back = from_table(pq.read_table(tmp_path / "t.parquet"), SynthesizedTurn)
    assert back == records
    assert back[0].audio.bytes == AUDIO_BYTES + b"\x00"
    assert isinstance(back[0].audio.bytes, bytes)


def test_other_models_round_trip():
    spoken = SourceDialogue(id="x", source="s", source_key="k", gender="female", age_group="elderly",
                            demographics_by="llm", rewrite_prompt="rewrite.consultation-v1-abc",
                            turns=[Turn(role="patient", text="嗯", speech_text="嗯")])
    rejection = Rejection(id="x", stage="filter", reason="filter.no", record_json="{}")
    assert from_table(to_table([spoken], SourceDialogue), SourceDialogue) == [spoken]
    assert from_table(to_table([rejection], Rejection), Rejection) == [rejection]


def test_empty_table_has_the_schema():
    table = to_table([], SourceDialogue)
    assert table.num_rows == 0
    assert table.schema == arrow_schema(SourceDialogue)
    assert from_table(table, SourceDialogue) == []


def test_from_table_validates_rows():
    table = pa.table({"id": ["x"], "stage": ["s"], "reason": ["r"]})  # record_json missing
    with pytest.raises(ValueError):
        from_table(table, Rejection)


@pytest.mark.parametrize("age, group", [(None, "unknown"), (-1, "unknown"), (0, "child"), (13, "child"),
                                        (14, "young_adult"), (25, "young_adult"), (26, "adult"), (40, "adult"),
                                        (41, "elderly"), (97, "elderly")])
def test_age_groups_match_the_voice_pool(age, group):
    assert age_group_of(age) == group


def test_records_are_frozen_and_strict():
    d = dialogue()
    with pytest.raises(ValueError):
        d.source = "other"  # type: ignore[misc]
    with pytest.raises(ValueError):
        Turn(role="patient", text="x", extra="no")  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        Turn(role="nurse", text="x")  # type: ignore[arg-type]


# -- ids and randomness ------------------------------------------------------------------

def test_record_id_is_stable():
    # Literal values computed once: a change here re-keys every existing run.
    assert record_id("cmedqa", "12345") == "cmedqa-378a4d85b5bbbf15"
    assert content_key("你好") == "sha:e07cdff212d4f3996c41275f"
    assert shard_of("cmedqa-1", 8) == 6
    assert seed_for(7, "rewrite", "x-1") == 7020876465460814033


def test_record_id_depends_on_source_and_key():
    assert record_id("a", "1") != record_id("a", "2")
    assert record_id("a", "1") != record_id("b", "1")
    assert record_id("a", "1").startswith("a-")
    # parts are separated: moving a character between them changes the hash
    assert record_id("ab", "c").split("-")[-1] != record_id("a", "bc").split("-")[-1]
    assert seed_for(1, "ab", "c") != seed_for(1, "a", "bc")


def test_shard_of_is_roughly_even():
    ids = [record_id("src", str(i)) for i in range(10_000)]
    counts = Counter(shard_of(i, 8) for i in ids)
    assert set(counts) == set(range(8))
    expected = 10_000 / 8
    assert all(abs(n - expected) < 0.1 * expected for n in counts.values()), counts


def test_shard_of_is_independent_of_order():
    ids = [record_id("src", str(i)) for i in range(2_000)]
    before = {i: shard_of(i, 16) for i in ids}
    shuffled = ids[:]
    random.Random(3).shuffle(shuffled)
    assert {i: shard_of(i, 16) for i in shuffled} == before


@pytest.mark.parametrize("num_shards", [1, 2, 7, 99999])
def test_shard_of_range(num_shards):
    assert all(0 <= shard_of(f"x-{i}", num_shards) < num_shards for i in range(200))


def test_rng_for_is_reproducible():
    a = rng_for(42, "voice_match", "src-1").integers(0, 2**32, size=8)
    b = rng_for(42, "voice_match", "src-1").integers(0, 2**32, size=8)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("other", [(43, "voice_match", "src-1"), (42, "synthesize", "src-1"), (42, "voice_match", "src-2")])
def test_rng_for_differs_per_seed_stage_and_id(other):
    base = rng_for(42, "voice_match", "src-1").integers(0, 2**32, size=8)
    assert not np.array_equal(base, rng_for(*other).integers(0, 2**32, size=8))


def test_seed_for_fits_63_bits():
    seeds = [seed_for(s, "stage", f"id-{i}") for s in range(3) for i in range(300)]
    assert all(0 <= s < 2**63 for s in seeds)
    assert len(set(seeds)) == len(seeds)


def test_content_key_depends_only_on_text():
    assert content_key("abc") == content_key("abc")
    assert content_key("abc") != content_key("abd")
    assert content_key("abc").startswith("sha:")
