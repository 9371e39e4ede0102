"""Dataset cards: statistics of an exported dataset, beside the paper's figures.

`DialogueStats` accumulates over rows (as dicts, one shard at a time) and renders the
card's Markdown. Multi-turn statistics are taken over the rewritten consultations (the
treatments the paper reports them for); a turn is one utterance, `<cough>` placeholders
are not counted as characters. The distributions the card's plots draw (`pipeline.plots`)
are kept as counters (turns per dialogue, characters per turn, tenths of a second of audio),
never as rows, so memory does not grow with the dataset.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from actors.rewrite_rules import COUGH, follow_ups

MULTI_TURN = ("consultation", "single_turn_qa", "cough")
# The two groups the turn and character distributions are split into.
REWRITTEN, OTHER = "rewritten multi-turn", "other"
PLOTS_DIR = "plots"  # beside the card, which links its images from there
# SpeechMedAssist's reported figures for its rewritten multi-turn consultations.
PAPER = {"turns": 6.58, "characters": 36.4, "follow_ups": 3.3}


@dataclass
class DialogueStats:
    rows: int = 0
    by_treatment: Counter = field(default_factory=Counter)
    by_source: Counter = field(default_factory=Counter)
    gender: Counter = field(default_factory=Counter)
    age_group: Counter = field(default_factory=Counter)
    multi_turn: int = 0
    turns: int = 0
    characters: int = 0
    follow_ups: int = 0
    # group (REWRITTEN / OTHER) → {turns in a dialogue: dialogues}, {characters in a turn: turns}
    turns_per_dialogue: dict[str, Counter] = field(default_factory=lambda: {REWRITTEN: Counter(), OTHER: Counter()})
    chars_per_turn: dict[str, Counter] = field(default_factory=lambda: {REWRITTEN: Counter(), OTHER: Counter()})
    patients: Counter = field(default_factory=Counter)  # (gender, age group) → dialogues

    def add(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.rows += 1
            self.by_treatment[row["treatment"]] += 1
            self.by_source[row["source"]] += 1
            gender, age = row.get("gender") or "unknown", row.get("age_group") or "unknown"
            self.gender[gender] += 1
            self.age_group[age] += 1
            self.patients[(gender, age)] += 1
            turns = row["turns"]
            chars = [len(t["text"].replace(COUGH, "")) for t in turns]
            rewritten = row["treatment"] in MULTI_TURN and bool(row.get("rewrite_prompt"))
            group = REWRITTEN if rewritten else OTHER
            self.turns_per_dialogue[group][len(turns)] += 1
            self.chars_per_turn[group].update(chars)
            if rewritten:
                self.multi_turn += 1
                self.turns += len(turns)
                self.characters += sum(chars)
                self.follow_ups += follow_ups([t["text"] for t in turns if t["role"] == "doctor"])

    def figures(self) -> dict[str, float] | None:
        """Means over the rewritten multi-turn dialogues, or None when there are none."""
        if not self.multi_turn:
            return None
        return {"turns": self.turns / self.multi_turn, "characters": self.characters / max(self.turns, 1),
                "follow_ups": self.follow_ups / self.multi_turn}


def _counts(title: str, counter: Counter, total: int) -> list[str]:
    lines = [f"| {title} | rows | share |", "|---|---|---|"]
    lines += [f"| {key} | {n} | {n / max(total, 1):.1%} |" for key, n in sorted(counter.items())]
    return lines + [""]


@dataclass
class SpeechStats:
    """Spoken turns (rows of the synthesize stage): audio hours, roles, engines, voices."""

    rows: int = 0
    seconds: float = 0.0
    dialogues: set[str] = field(default_factory=set)
    role: Counter = field(default_factory=Counter)
    engine: Counter = field(default_factory=Counter)
    match: Counter = field(default_factory=Counter)
    speakers: set[str] = field(default_factory=set)
    coughs: int = 0
    retried: int = 0
    with_units: int = 0
    durations: dict[str, Counter] = field(default_factory=dict)  # role → {tenths of a second: turns}
    # (speaker gender, speaker age group) of each dialogue's patient voice, once per dialogue;
    # a random timbre has neither ("none", "random timbre").
    patient_voices: Counter = field(default_factory=Counter)
    _voiced: set[str] = field(default_factory=set)

    def add(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.rows += 1
            self.seconds += row["duration_s"]
            self.dialogues.add(row["dialogue_id"])
            self.role[row["role"]] += 1
            self.durations.setdefault(row["role"], Counter())[round(row["duration_s"] * 10)] += 1
            if row["role"] == "patient" and row["dialogue_id"] not in self._voiced:
                self._voiced.add(row["dialogue_id"])
                voice = row["voice"]
                self.patient_voices[(voice.get("speaker_gender") or "none",
                                     voice.get("speaker_age_group") or "random timbre")] += 1
            self.engine[row["engine"]] += 1
            self.match[row["voice"]["match"]] += 1
            if row["voice"].get("speaker_id"):
                self.speakers.add(row["voice"]["speaker_id"])
            self.coughs += len(row.get("coughs") or [])
            self.retried += row.get("attempts", 1) > 1
            self.with_units += row.get("units") is not None

    def lines(self) -> list[str]:
        if not self.rows:
            return []
        return [
            "## Speech", "",
            "| statistic | value |", "|---|---|",
            f"| spoken turns | {self.rows} |",
            f"| dialogues | {len(self.dialogues)} |",
            f"| audio hours | {self.seconds / 3600:.3f} |",
            f"| mean seconds per turn | {self.seconds / self.rows:.2f} |",
            f"| reference speakers used | {len(self.speakers)} |",
            f"| coughs spliced | {self.coughs} |",
            f"| turns re-synthesised after the audio checks | {self.retried} |",
            f"| turns with speech units | {self.with_units} |",
            "",
            *_counts("role", self.role, self.rows), *_counts("TTS engine", self.engine, self.rows),
            *_counts("voice matched on", self.match, self.rows),
        ]


@dataclass(frozen=True)
class Sizes:
    rows: int
    arrow_bytes: int  # the rows in memory (the `num_bytes` of the split)
    parquet_bytes: int  # the files (the `download_size`)


def yaml_header(sizes: Sizes) -> list[str]:
    """The card's YAML header: the data files of the `train` split, and its sizes.

    The sizes are not decoration: `datasets` caches a local folder's dataset under a key
    made from this header (not from the files), so two exports of the same name in
    different runs would otherwise load the first one's cached rows for both."""
    return [
        "---", "configs:", "- config_name: default", "  data_files:", "  - split: train", "    path: data/*.parquet",
        "dataset_info:", "  config_name: default", "  splits:", "  - name: train",
        f"    num_bytes: {sizes.arrow_bytes}", f"    num_examples: {sizes.rows}",
        f"  download_size: {sizes.parquet_bytes}", "---",
    ]


def _images(plots: dict[str, str], *files: str) -> list[str]:
    """Markdown image links to those of `files` the card has plots for (file → alt text)."""
    return [line for f in files if f in plots for line in (f"![{plots[f]}]({PLOTS_DIR}/{f})", "")]


def render_card(name: str, stage: str, sizes: Sizes, stats: DialogueStats, rejected: dict[str, Counter],
                speech: SpeechStats | None = None, plots: dict[str, str] | None = None) -> str:
    """The README.md of an exported dataset: HF header, statistics, rejections; `plots`
    (file name under plots/ → alt text) are linked beside the statistics they draw."""
    plots = plots or {}
    rows = sizes.rows
    lines = [
        *yaml_header(sizes),
        f"# {name}", "",
        f"Exported by speechmed from stage `{stage}`: {rows} rows.", "",
    ]
    if stats.rows:
        lines += _counts("treatment", stats.by_treatment, stats.rows) + _counts("source", stats.by_source, stats.rows)
    figures = stats.figures()
    if figures:
        lines += [
            f"## Rewritten multi-turn consultations ({stats.multi_turn})", "",
            "| statistic | this dataset | SpeechMedAssist paper |", "|---|---|---|",
            f"| turns (utterances) per dialogue | {figures['turns']:.2f} | {PAPER['turns']} |",
            f"| characters per turn | {figures['characters']:.1f} | {PAPER['characters']} |",
            f"| doctor follow-up questions per dialogue | {figures['follow_ups']:.2f} | {PAPER['follow_ups']} |",
            "",
        ]
    if stats.rows and _images(plots, "turns.png", "characters.png"):
        lines += [f"## Turns and characters (all {stats.rows} dialogues)", "",
                  *_images(plots, "turns.png", "characters.png")]
    if stats.rows:
        lines += ["## Patients", ""] + _counts("gender", stats.gender, stats.rows) + _counts("age group", stats.age_group, stats.rows)
        lines += _images(plots, "demographics.png")
    if speech and speech.rows:
        lines += speech.lines() + _images(plots, "durations.png", "voices.png")
    if any(rejected.values()):
        lines += ["## Rejected on the way, by stage and reason", "", "| stage | reason | rows |", "|---|---|---|"]
        lines += [f"| {st} | {reason} | {n} |" for st, reasons in rejected.items() for reason, n in sorted(reasons.items())]
        lines += ["", *_images(plots, "rejections.png")]
    return "\n".join(lines)
