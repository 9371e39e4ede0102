"""Dataset-card statistics (pure): what counts as a turn, a character, a follow-up."""

from __future__ import annotations

from collections import Counter

from actors.demographics import from_source
from pipeline.card import DialogueStats, Sizes, render_card
from schemas import SourceDialogue, Turn


def row(treatment: str, turns: list[tuple[str, str]], *, rewritten: bool = True, **fields: object) -> dict:
    return {"source": "s", "treatment": treatment, "rewrite_prompt": "rewrite.x-v1-abc" if rewritten else None,
            "turns": [{"role": r, "text": t} for r, t in turns], **fields}


def test_multi_turn_figures_count_rewritten_consultations_only() -> None:
    stats = DialogueStats()
    stats.add([
        row("consultation", [("patient", "我<cough>嗓子疼"), ("doctor", "几天了？"), ("patient", "三天"), ("doctor", "多喝水。")],
            gender="female", age_group="adult"),
        row("single_turn_qa", [("patient", "能吃吗"), ("doctor", "有过敏吗？"), ("patient", "没有"), ("doctor", "可以？"),
                               ("patient", "好"), ("doctor", "按说明吃。")], gender="male", age_group="unknown"),
        row("knowledge_qa", [("patient", "下列哪项正确"), ("doctor", "答案是A")], rewritten=False),
        row("consultation", [("patient", "头疼"), ("doctor", "多久了？")], rewritten=False),  # not rewritten
    ])
    figures = stats.figures()
    assert stats.rows == 4 and stats.multi_turn == 2
    assert figures["turns"] == 5.0  # (4 + 6) / 2
    # "<cough>" is a sound, not characters: 4 + 4 + 2 + 4 and 3 + 5 + 2 + 3 + 1 + 5
    assert figures["characters"] == (14 + 19) / 10
    assert figures["follow_ups"] == (1 + 2) / 2  # the closing advice is never a follow-up
    assert stats.gender == Counter({"female": 1, "male": 1, "unknown": 2})


def test_card_shows_paper_figures_and_rejections() -> None:
    stats = DialogueStats()
    stats.add([row("consultation", [("patient", "头疼"), ("doctor", "多久了？"), ("patient", "两天"), ("doctor", "休息。")])])
    card = render_card("TextMedDataset", "demographics", Sizes(1, 100, 80), stats,
                       {"rewrite": Counter({"rewrite.follow_ups": 3})})
    assert card.startswith("---\nconfigs:")
    assert "| turns (utterances) per dialogue | 4.00 | 6.58 |" in card
    assert "| doctor follow-up questions per dialogue | 1.00 | 3.3 |" in card
    assert "| rewrite | rewrite.follow_ups | 3 |" in card
    empty = render_card("Empty", "x", Sizes(0, 0, 0), DialogueStats(), {})
    assert "SpeechMedAssist paper" not in empty and "0 rows" in empty


def test_stated_demographics_win() -> None:
    base = {"id": "a", "source": "meddg", "source_key": "k", "turns": [Turn(role="patient", text="头疼")]}
    assert from_source(SourceDialogue(**base, gender="male", age=32)).age_group == "adult"
    assert from_source(SourceDialogue(**base, age=None)).age_group == "unknown"
    assert from_source(SourceDialogue(**base, age=80, age_group="child")).age_group == "child"  # already set: kept


def test_same_name_exports_of_two_runs_load_their_own_rows(tmp_path, monkeypatch) -> None:
    """`datasets` keys its cache of a local folder on the card header: each export's sizes
    are in it, so one process loading two runs' TextMedDataset gets each run's rows."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.card import yaml_header

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    for run, n in (("a", 3), ("b", 5)):
        folder = tmp_path / run / "TextMedDataset"
        (folder / "data").mkdir(parents=True)
        table = pa.table({"x": list(range(n))})
        pq.write_table(table, folder / "data" / "train-00000-of-00001.parquet")
        size = (folder / "data" / "train-00000-of-00001.parquet").stat().st_size
        (folder / "README.md").write_text("\n".join(yaml_header(Sizes(n, table.nbytes, size))) + "\n")
    assert [len(datasets.load_dataset(str(tmp_path / r / "TextMedDataset"), split="train")) for r in "aba"] == [3, 5, 3]
