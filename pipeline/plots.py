"""The plots of a dataset card: card statistics in, PNG bytes out.

Two pure steps, so a test can check what is drawn as well as that it is drawn:
`card_plots` turns the card's counters (`pipeline.card`) into `Plot`s, bar charts whose
numbers are exactly the counters' (binned where a distribution is wide), and `render`
draws one as PNG bytes with matplotlib's Agg canvas (no display, no pyplot state).

    turns.png         turns (utterances) per dialogue, rewritten multi-turn vs other dialogues
    characters.png    characters per turn (`<cough>` not counted), the same two groups
    demographics.png  patients by age group and gender
    durations.png     seconds of audio per spoken turn, by role
    voices.png        TTS engines and what voices were matched on (turns); patient voices (dialogues)
    rejections.png    rejected rows by stage and reason, across the run

Rendering is deterministic: matplotlib's default style whatever the user's matplotlibrc,
fixed size and resolution, and no `Software` entry in the PNG (which has no time stamp),
so the same statistics give the same bytes.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass

from pipeline.card import OTHER, PLOTS_DIR, REWRITTEN, DialogueStats, SpeechStats

AGE_ORDER = ("child", "young_adult", "adult", "elderly", "unknown", "random timbre")
MAX_REASONS = 20  # bars in the rejections plot; the rest are summed into one
_DPI = 100
_PALETTE = ("#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#bbbbbb")


@dataclass(frozen=True)
class Panel:
    """One bar chart: a bar per category, series stacked in order (values aligned with
    `categories`)."""

    title: str
    xlabel: str
    ylabel: str
    categories: tuple[str, ...]
    series: dict[str, tuple[int, ...]]
    horizontal: bool = False
    legend: bool = True  # off where the one series is just the counted thing


@dataclass(frozen=True)
class Plot:
    file: str  # name under plots/
    alt: str  # the card's alt text
    panels: tuple[Panel, ...]

    @property
    def path(self) -> str:
        """Relative to the card."""
        return f"{PLOTS_DIR}/{self.file}"


# -- statistics → plots ----------------------------------------------------------------
def histogram(series: dict[str, Counter], width: int, cap: int) -> tuple[tuple[str, ...], dict[str, tuple[int, ...]]]:
    """Integer values binned `[k·width, (k+1)·width)` from the lowest bin present to the
    highest (empty bins between kept, so the x axis is linear); values ≥ `cap` share one
    last bin `≥cap`. Series with no values are left out."""
    present = [v for counts in series.values() for v, n in counts.items() if n]
    if not present:
        return (), {}
    last = cap // width  # index of the `≥cap` bin
    first, top = min(min(present) // width, last), min(max(present) // width, last)
    bins = range(first, top + 1)
    labels = tuple(f"≥{cap}" if b == last else (str(b * width) if width == 1 else f"{b * width}–{(b + 1) * width - 1}")
                   for b in bins)
    out = {}
    for name, counts in series.items():
        binned: Counter = Counter()
        for value, n in counts.items():
            binned[min(value // width, last)] += n
        if sum(binned.values()):
            out[name] = tuple(binned[b] for b in bins)
    return labels, out


def grid(pairs: Counter, order: tuple[str, ...] = AGE_ORDER) -> tuple[tuple[str, ...], dict[str, tuple[int, ...]]]:
    """(series, category) counts → categories (in `order`, then alphabetical) and aligned series."""
    categories = sorted({c for _, c in pairs}, key=lambda c: (order.index(c) if c in order else len(order), c))
    names = sorted({s for s, _ in pairs})
    return tuple(categories), {s: tuple(pairs.get((s, c), 0) for c in categories) for s in names}


def _single(counter: Counter, label: str) -> tuple[tuple[str, ...], dict[str, tuple[int, ...]]]:
    keys = sorted(counter)
    return tuple(keys), {label: tuple(counter[k] for k in keys)}


def dialogue_plots(stats: DialogueStats) -> list[Plot]:
    if not stats.rows:
        return []
    groups = (REWRITTEN, OTHER)
    turn_bins, turn_series = histogram({g: stats.turns_per_dialogue[g] for g in groups}, 1, 30)
    char_bins, char_series = histogram({g: stats.chars_per_turn[g] for g in groups}, 10, 200)
    ages, genders = grid(stats.patients)
    return [
        Plot("turns.png", "turns per dialogue", (Panel(
            f"Turns (utterances) per dialogue ({stats.rows} dialogues)", "turns", "dialogues",
            turn_bins, turn_series),)),
        Plot("characters.png", "characters per turn", (Panel(
            f"Characters per turn ({sum(sum(c.values()) for c in stats.chars_per_turn.values())} turns)",
            "characters", "turns", char_bins, char_series),)),
        Plot("demographics.png", "patients by gender and age group", (Panel(
            f"Patients by age group and gender ({stats.rows} dialogues)", "age group", "dialogues", ages, genders),)),
    ]


def speech_plots(speech: SpeechStats) -> list[Plot]:
    if not speech.rows:
        return []
    # Tenths of a second, in 1 s bins, 30 s and longer in one; patient turns first.
    roles = sorted(speech.durations, key=lambda role: (role != "patient", role))
    bins, by_role = histogram({role: speech.durations[role] for role in roles}, 10, 300)
    bins = tuple(_seconds(label) for label in bins)
    engines, matches = _single(speech.engine, "turns"), _single(speech.match, "turns")
    ages, genders = grid(speech.patient_voices)
    return [
        Plot("durations.png", "audio durations", (Panel(
            f"Audio seconds per spoken turn ({speech.rows} turns, {speech.seconds / 3600:.2f} h)", "seconds", "turns",
            bins, by_role),)),
        Plot("voices.png", "voice and engine mix", (
            Panel("TTS engine", "engine", "turns", *engines, legend=False),
            Panel("Voice matched on", "attributes", "turns", *matches, legend=False),
            Panel(f"Patient voices ({sum(speech.patient_voices.values())} dialogues)", "speaker age group", "dialogues",
                  ages, genders),
        )),
    ]


def _seconds(label: str) -> str:
    """A 1 s bin's label in tenths of a second ('20–29', '≥300') in seconds ('2–3', '≥30')."""
    if label.startswith("≥"):
        return f"≥{int(label[1:]) // 10}"
    low = int(label.split("–")[0]) // 10
    return f"{low}–{low + 1}"


def rejection_plot(rejected: dict[str, Counter]) -> Plot | None:
    """Rejected rows by stage and reason, most first; past MAX_REASONS the rest in one bar."""
    counts = sorted(((n, _reason_label(stage, reason)) for stage, reasons in rejected.items()
                     for reason, n in reasons.items() if n), key=lambda x: (-x[0], x[1]))
    if not counts:
        return None
    shown, rest = counts[:MAX_REASONS], counts[MAX_REASONS:]
    labels = [label for _, label in shown] + ([f"{len(rest)} other reasons"] if rest else [])
    values = [n for n, _ in shown] + ([sum(n for n, _ in rest)] if rest else [])
    return Plot("rejections.png", "rejection reasons", (Panel(
        f"Rejected rows by stage and reason ({sum(n for n, _ in counts)} rows)", "rows", "",
        tuple(labels), {"rows": tuple(values)}, horizontal=True, legend=False),))


def _reason_label(stage: str, reason: str) -> str:
    """`reason` alone where it already starts with the stage's name (reasons are prefixed by
    their stage's kind, which is often also its name)."""
    return reason if reason.startswith(f"{stage}.") else f"{stage}: {reason}"


def card_plots(stats: DialogueStats, speech: SpeechStats, rejected: dict[str, Counter]) -> list[Plot]:
    """Every plot the card of a dataset with these statistics shows, in card order."""
    rejections = rejection_plot(rejected)
    return dialogue_plots(stats) + speech_plots(speech) + ([rejections] if rejections else [])


# -- plots → PNG -----------------------------------------------------------------------
def figure(plot: Plot):  # -> matplotlib.figure.Figure (imported lazily: the CLI starts faster)
    """The matplotlib Figure of a plot, on an Agg canvas."""
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.style.context("default"):
        if plot.panels[0].horizontal:  # one bar a line: the height grows with the bars
            size = (8.0, max(3.0, 0.3 * len(plot.panels[0].categories) + 1.5))
        else:  # side by side, each as wide as its bars need
            size = (sum(max(4.0, min(12.0, 0.3 * len(p.categories) + 2.5)) for p in plot.panels), 4.0)
        fig = Figure(figsize=size, dpi=_DPI, layout="constrained")
        FigureCanvasAgg(fig)
        for ax, panel in zip(fig.subplots(1, len(plot.panels), squeeze=False)[0], plot.panels):
            _draw(ax, panel)
    return fig


def _draw(ax, panel: Panel) -> None:
    positions = range(len(panel.categories))
    base = [0] * len(panel.categories)
    for (name, values), colour in zip(panel.series.items(), _PALETTE * 4):
        bar = ax.barh if panel.horizontal else ax.bar
        bar(positions, values, 0.8, base, label=name, color=colour)
        base = [b + v for b, v in zip(base, values)]
    # Room for at least three bars, so one or two bars are not drawn as wide as the axes.
    margin = max(0, 3 - len(panel.categories)) / 2
    (ax.set_ylim if panel.horizontal else ax.set_xlim)(-0.5 - margin, len(panel.categories) - 0.5 + margin)
    if panel.horizontal:
        ax.set_yticks(list(positions), panel.categories, fontsize=8)
        ax.invert_yaxis()  # most first, at the top
        ax.set_xlabel(panel.xlabel)
    else:
        rotate = len(panel.categories) > 12 or max((len(c) for c in panel.categories), default=0) > 8
        ax.set_xticks(list(positions), panel.categories, rotation=60 if rotate else 0,
                      ha="right" if rotate else "center", fontsize=8)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
    ax.set_title(panel.title, fontsize=10)
    if panel.legend and panel.series:
        ax.legend(fontsize=8)


def render(plot: Plot) -> bytes:
    """PNG bytes of a plot (the same bytes for the same plot)."""
    buffer = io.BytesIO()
    figure(plot).savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()
