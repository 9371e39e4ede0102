"""The plots of a dataset card: the numbers they draw (binning, grids, the rejections'
cut-off), that the figure draws exactly those numbers, deterministic PNG bytes, and the
plots of real exports (the session's shared run of sample consultations and MedDG dialogues
with stated gender and age, through the prefilter, voice matching and espeak synthesis):
files beside the card, linked from it, checked by their export marker, and showing the
export's rows."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline.card import OTHER, REWRITTEN, DialogueStats, SpeechStats
from pipeline.export import export_stage
from pipeline.plots import (MAX_REASONS, card_plots, dialogue_plots, figure, histogram, rejection_plot, render,
                            speech_plots)
from schemas import SourceDialogue, arrow_schema
from storage.markers import ExportMarker
from storage.rundir import RunDir
from storage.verify import verify

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _dialogue(treatment: str, n: int, *, rewritten: bool, gender: str = "unknown", age: str = "unknown") -> dict:
    return {"source": "s", "treatment": treatment, "rewrite_prompt": "rewrite.x" if rewritten else None,
            "gender": gender, "age_group": age,
            "turns": [{"role": "patient" if i % 2 == 0 else "doctor", "text": "字" * (3 + 7 * i)} for i in range(n)]}


def test_histogram_bins_and_caps() -> None:
    labels, series = histogram({"a": Counter({1: 2, 3: 1, 40: 5}), "empty": Counter()}, 1, 30)
    assert labels == (*(str(i) for i in range(1, 30)), "≥30") and list(series) == ["a"]
    assert series["a"] == (2, 0, 1, *[0] * 26, 5)
    labels, series = histogram({"x": Counter({5: 1, 25: 2}), "y": Counter({19: 4, 250: 1})}, 10, 200)
    assert labels == (*(f"{b}–{b + 9}" for b in range(0, 200, 10)), "≥200")
    assert series["x"][:3] == (1, 0, 2) and series["y"][1] == 4 and series["y"][-1] == 1 and sum(series["y"]) == 5
    assert histogram({"a": Counter()}, 1, 30) == ((), {})


def test_dialogue_plots_draw_the_stats() -> None:
    stats = DialogueStats()
    stats.add([_dialogue("consultation", 4, rewritten=True, gender="female", age="adult"),
               _dialogue("consultation", 6, rewritten=True, gender="male", age="child"),
               _dialogue("knowledge_qa", 2, rewritten=False, gender="female", age="adult"),
               _dialogue("consultation", 4, rewritten=False)])
    turns, chars, demographics = dialogue_plots(stats)
    (panel,) = turns.panels
    assert panel.categories == ("2", "3", "4", "5", "6")
    assert panel.series == {REWRITTEN: (0, 0, 1, 0, 1), OTHER: (1, 0, 1, 0, 0)}
    # Turn i has 3 + 7i characters: 3, 10, 17, 24, 31, 38 (rewritten: 4 + 6 turns, other: 2 + 4).
    (panel,) = chars.panels
    assert panel.categories == ("0–9", "10–19", "20–29", "30–39")
    assert panel.series == {REWRITTEN: (2, 4, 2, 2), OTHER: (2, 3, 1, 0)}
    assert sum(map(sum, panel.series.values())) == stats.turns + 6
    (panel,) = demographics.panels
    assert panel.categories == ("child", "adult", "unknown")
    assert panel.series == {"female": (0, 2, 0), "male": (1, 0, 0), "unknown": (0, 0, 1)}


def test_speech_plots_count_voices_once_per_dialogue() -> None:
    speech = SpeechStats()
    voice = {"match": "gender", "speaker_id": "S1", "speaker_gender": "male", "speaker_age_group": "elderly"}
    timbre = {"match": "none", "speaker_id": None, "speaker_gender": None, "speaker_age_group": None}
    speech.add([
        {"dialogue_id": "a", "role": "patient", "duration_s": 1.04, "engine": "cosyvoice2", "voice": voice},
        {"dialogue_id": "a", "role": "doctor", "duration_s": 2.96, "engine": "cosyvoice2", "voice": timbre},
        {"dialogue_id": "a", "role": "patient", "duration_s": 1.96, "engine": "cosyvoice2", "voice": voice},
        {"dialogue_id": "b", "role": "patient", "duration_s": 45.0, "engine": "fishspeech", "voice": timbre},
    ])
    durations, voices = speech_plots(speech)
    (panel,) = durations.panels
    # 1.0, 2.0 (1.96 s is 19.6 tenths, rounded to 20) and 45 s (≥30) for the patient; 3.0 for the doctor.
    assert panel.categories[:3] == ("1–2", "2–3", "3–4") and panel.categories[-1] == "≥30"
    assert panel.series["patient"][:3] == (1, 1, 0) and panel.series["patient"][-1] == 1
    assert panel.series["doctor"][:3] == (0, 0, 1) and list(panel.series) == ["patient", "doctor"]
    engines, matches, patients = voices.panels
    assert engines.categories == ("cosyvoice2", "fishspeech") and engines.series == {"turns": (3, 1)}
    assert matches.series == {"turns": (2, 2)}
    assert patients.categories == ("elderly", "random timbre")
    assert patients.series == {"male": (1, 0), "none": (0, 1)}  # dialogue a once, for its patient


def test_rejection_plot_keeps_the_largest_reasons() -> None:
    rejected = {"prefilter": Counter({"prefilter.too_short": 7}),
                "filter": Counter({f"llm_filter.r{i:02d}": i for i in range(1, 25)})}
    (panel,) = rejection_plot(rejected).panels
    assert panel.categories[0] == "filter: llm_filter.r24" and "prefilter.too_short" in panel.categories
    assert len(panel.categories) == MAX_REASONS + 1 and panel.categories[-1] == "5 other reasons"
    assert panel.series["rows"][-1] == 1 + 2 + 3 + 4 + 5 and sum(panel.series["rows"]) == 7 + sum(range(1, 25))
    assert rejection_plot({"prefilter": Counter()}) is None


def test_figure_draws_exactly_the_data_and_png_is_deterministic() -> None:
    stats = DialogueStats()
    stats.add([_dialogue("consultation", n, rewritten=n > 3) for n in (2, 4, 4, 6, 8)])
    rejected = {"prefilter": Counter({"prefilter.too_short": 3, "prefilter.not_chinese": 1})}
    for plot in card_plots(stats, SpeechStats(), rejected):
        for ax, panel in zip(figure(plot).axes, plot.panels):
            widths = [b.get_width() if panel.horizontal else b.get_height() for b in ax.patches]
            assert widths == [v for values in panel.series.values() for v in values]  # stacked: series after series
            labels = [t.get_text() for t in (ax.get_yticklabels() if panel.horizontal else ax.get_xticklabels())]
            assert labels == list(panel.categories)
        png = render(plot)
        assert png.startswith(PNG_SIGNATURE) and png == render(plot) and b"Matplotlib" not in png


# -- real exports (the session's shared `spoken_run`, see conftest) -----------------------

def _plots(run: Path, name: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run / "datasets" / name / "plots").glob("*.png"))}


def _rows(run: Path, name: str, columns: list[str]) -> list[dict]:
    return pq.read_table(run / "datasets" / name / "data", columns=columns).to_pylist()


def test_exports_have_linked_nontrivial_pngs_checked_by_their_marker(spoken_run: Path) -> None:
    import matplotlib.image

    expected = {"TextMedDataset": ["characters.png", "demographics.png", "rejections.png", "turns.png"],
                "SpeechMedDataset": ["durations.png", "rejections.png", "voices.png"]}
    for name, files in expected.items():
        base = spoken_run / "datasets" / name
        assert sorted(_plots(spoken_run, name)) == files
        card = (base / "README.md").read_text(encoding="utf-8")
        marker = ExportMarker.model_validate_json((base / "_EXPORTED.json").read_text())
        recorded = {Path(f.path).name: f for f in marker.files if f.path.startswith(f"datasets/{name}/plots/")}
        assert sorted(recorded) == files
        for file in files:
            data = (base / "plots" / file).read_bytes()
            assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000
            assert recorded[file].bytes == len(data)
            assert f"](plots/{file})" in card
            pixels = matplotlib.image.imread(base / "plots" / file)
            assert pixels.shape[0] >= 300 and pixels.shape[1] >= 400
            colours = np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)
            assert len(colours) > 10 and pixels[..., :3].std() > 0.05  # axes, bars, text: not a blank image
            white = (pixels[..., :3] > 0.99).all(axis=-1).mean()
            assert 0.5 < white < 0.99
    assert verify(RunDir(str(spoken_run))) == []


def test_plots_show_the_exported_rows(spoken_run: Path) -> None:
    rundir = RunDir(str(spoken_run))
    text = _rows(spoken_run, "TextMedDataset", ["source", "treatment", "gender", "age_group", "rewrite_prompt", "turns"])
    stats = DialogueStats()
    stats.add(text)
    turns, chars, demographics = dialogue_plots(stats)
    # Counted straight from the rows, not through the card's counters.
    by_length = Counter(len(r["turns"]) for r in text)
    (panel,) = turns.panels
    assert {int(c): sum(s[i] for s in panel.series.values()) for i, c in enumerate(panel.categories)} == \
        {n: by_length.get(n, 0) for n in range(min(by_length), max(by_length) + 1)}
    (panel,) = demographics.panels
    patients = Counter((r["gender"], r["age_group"]) for r in text)
    assert {(g, a): panel.series[g][panel.categories.index(a)] for g, a in patients} == patients
    assert {g for g, _ in patients} >= {"male", "female"}  # MedDG states them
    assert sum(map(sum, chars.panels[0].series.values())) == sum(len(r["turns"]) for r in text)

    speech = SpeechStats()
    speech.add(_rows(spoken_run, "SpeechMedDataset", ["dialogue_id", "role", "duration_s", "engine", "voice", "attempts", "units"]))
    durations, voices = speech_plots(speech)
    (panel,) = durations.panels
    assert sum(map(sum, panel.series.values())) == speech.rows > 0
    assert voices.panels[0].series == {"turns": (speech.rows,)} and voices.panels[0].categories == ("espeak",)
    assert sum(map(sum, voices.panels[2].series.values())) == len(speech.dialogues)

    rejected = {stage: Counter() for stage in rundir.run_info().fingerprints}
    for stage in rejected:
        for seal in rundir.seals(stage).values():
            rejected[stage].update(seal.rejected_by_reason)
    assert rejected["prefilter"]  # the shared run samples consultations the prefilter rejects
    rejections = rejection_plot(rejected)
    assert "ingest.malformed" in rejections.panels[0].categories and sum(rejections.panels[0].series["rows"]) == \
        sum(sum(c.values()) for c in rejected.values())
    # The files hold these very plots (rendering is deterministic).
    written = {**{f"text/{k}": v for k, v in _plots(spoken_run, "TextMedDataset").items()},
               **{f"speech/{k}": v for k, v in _plots(spoken_run, "SpeechMedDataset").items()}}
    for key, plot in [("text/turns.png", turns), ("text/characters.png", chars), ("text/demographics.png", demographics),
                      ("speech/durations.png", durations), ("speech/voices.png", voices),
                      ("text/rejections.png", rejections), ("speech/rejections.png", rejections)]:
        assert render(plot) == written[key], key


def test_reexport_gives_the_same_bytes_and_verify_catches_an_altered_plot(spoken_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(spoken_run, copy)
    rundir = RunDir(str(copy))
    info = rundir.run_info()
    seals = {stage: rundir.seals(stage) for stage in info.fingerprints}
    export_stage(rundir, "Again", "normalize", arrow_schema(SourceDialogue), info.fingerprints["normalize"],
                 info.config["num_shards"], seals)
    assert _plots(copy, "Again") == _plots(copy, "TextMedDataset")
    assert verify(rundir) == []
    victim = copy / "datasets" / "Again" / "plots" / "turns.png"
    victim.write_bytes(victim.read_bytes()[:-20] + bytes(20))
    assert [str(p) for p in verify(rundir)] == [
        "datasets/Again/plots/turns.png: checksum differs from its marker (file altered)"]
    json.loads((copy / "datasets" / "Again" / "_EXPORTED.json").read_text())  # the marker itself untouched
