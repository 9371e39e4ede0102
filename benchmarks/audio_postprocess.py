"""Audio post-processing throughput (issue 5, P5): what the synthesize stage does to a turn
after the engine has spoken it, in one process on one core, against real time.

Per turn, with the production functions: every piece the engine returned resampled to
16 kHz mono (`to_mono_16k`, soxr HQ), the pieces and a cough clip spliced (`splice`:
loudness matching, crossfades), the result encoded as FLAC (`flac_bytes`); per part of
`--part-rows` turns, the `SynthesizedTurn` rows built, converted (`to_table`) and
committed the way a worker commits a part (`RunDir.commit_part`: Parquet with dictionary
encoding off for the audio, temp write + rename, checksum, commit marker). The audio
checks (`qc_scores`) the stage also runs are timed and reported beside P5's list, not in
it. Figure: seconds of audio processed per CPU-second (`time.process_time`, every thread of
the process) and per wall second, per step and in total. Target ≥ 1,000× real time.

Input, made before the clock starts: the patient turns of the bundled sample
consultations spoken by espeak-ng in several voices, each turn cut at its first comma into
two pieces synthesised separately (as a `<cough>` placeholder cuts a turn), upsampled to
`--rate` (24 kHz, CosyVoice2's output; 22050 is espeak's own); cough-like clips (shaped
noise bursts, no cough recordings ship with any package) at 44.1/22.05/16 kHz, loaded by
the stage's own `load_clips`.

    python benchmarks/audio_postprocess.py [--turns 3000] [--rate 24000] [--part-rows 64]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import soxr
from _common import REPO, machine

from actors.audio import RATE, flac_bytes, splice, to_mono_16k, write_cough_like_clips
from actors.audio_qc import qc_scores
from actors.engines.espeak_engine import EspeakEngine
from actors.engines.tts import TTSConfig
from actors.rewrite_rules import COUGH
from actors.synthesize import load_clips
from schemas import AudioData, CoughSplice, SynthesizedTurn, VoiceChoice, to_table
from storage.rundir import RunDir

TARGET = 1000.0
SAMPLE = REPO / "pipeline" / "demo" / "sample_consultations.json"
# The Parquet write is three steps: the rows built, converted to Arrow, committed.
PARQUET_STEPS = ("rows", "to_table", "commit")
P5_STEPS = ("resample", "splice", "flac", *PARQUET_STEPS)


class Clock:
    """CPU and wall seconds per named step, summed over the calls."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.wall: dict[str, float] = defaultdict(float)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        cpu, wall = time.process_time(), time.perf_counter()
        yield
        self.cpu[name] += time.process_time() - cpu
        self.wall[name] += time.perf_counter() - wall


def patient_texts() -> list[str]:
    dialogues = json.loads(SAMPLE.read_text(encoding="utf-8"))
    return [t["value"] for d in dialogues for t in d["conversations"] if t["from"] == "human"]


def make_turns(rate: int, voices: int) -> list[tuple[str, list[np.ndarray]]]:
    """(text with a cough placeholder, its two pieces at `rate`) for every sample patient turn."""
    engine = EspeakEngine(TTSConfig())
    turns = []
    for i, text in enumerate(patient_texts()):
        cut = text.find("，") + 1 or len(text) // 2
        voice = VoiceChoice(engine="random_timbre", match="none", seed=i % voices)
        pieces = []
        for part in (text[:cut], text[cut:]):
            samples, native = engine.synthesize(part, voice, 0)
            pieces.append(soxr.resample(samples, native, rate, quality="HQ").astype(np.float32) if native != rate else samples)
        turns.append((f"{text[:cut]}{COUGH}{text[cut:]}", pieces))
    engine.close()
    return turns


def write_coughs(folder: Path) -> Path:
    """Cough-like clips: decaying noise bursts with a fast attack, at the rates real files come in."""
    return write_cough_like_clips(folder, [(44_100, 0.35), (16_000, 0.5), (22_050, 0.3), (44_100, 0.6), (16_000, 0.25)])


def process(turns: list[tuple[str, list[np.ndarray]]], coughs: list[tuple[str, np.ndarray]], n: int, rate: int,
            part_rows: int, run: Path) -> tuple[Clock, float, int]:
    """The stage's post-processing of `n` turns (cycling over the made ones); returns the
    clock, the seconds of audio produced and the Parquet bytes committed."""
    clock, rundir = Clock(), RunDir(str(run))
    voice = VoiceChoice(engine="zero_shot", match="gender_age", seed=1, speaker_gender="female", speaker_age_group="adult")
    audio_s, written, rows = 0.0, 0, []
    for k in range(n):
        text, pieces = turns[k % len(turns)]
        clip_id, cough = coughs[k % len(coughs)]
        with clock.step("resample"):
            spoken = [to_mono_16k(p, rate) for p in pieces]
        with clock.step("splice"):
            audio, spans = splice(spoken, [cough])
        with clock.step("qc"):
            scores = qc_scores(audio, RATE, text, inserted_s=sum(s.duration_s for s in spans))
        with clock.step("flac"):
            data = flac_bytes(audio)
        audio_s += len(audio) / RATE
        with clock.step("rows"):
            rows.append(SynthesizedTurn(
                id=f"d{k}-0", dialogue_id=f"d{k}", turn_index=0, role="patient", text=text,
                audio=AudioData(bytes=data, path=f"d{k}-0.flac"), sample_rate=RATE, duration_s=round(len(audio) / RATE, 4),
                engine="cosyvoice2" if rate == 24_000 else "espeak", voice=voice, qc=scores,
                coughs=[CoughSplice(clip_id=clip_id, offset_s=round(s.offset_s, 4), duration_s=round(s.duration_s, 4))
                        for s in spans]))
        if len(rows) == part_rows or k == n - 1:
            with clock.step("to_table"):
                table = to_table(rows, SynthesizedTurn)
            with clock.step("commit"):
                commit = rundir.commit_part("speak", 0, k // part_rows, table, None, fingerprint="bench",
                                            rows_in=len(rows), rejected_by_reason={}, elapsed_s=0.0,
                                            session="bench", fence=None)
            written += commit.output.bytes
            rows = []
    return clock, audio_s, written


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=3000, help="turns processed (cycling over the ~130 made ones)")
    parser.add_argument("--rate", type=int, default=24_000, help="the engine's output rate (24000 CosyVoice2, 22050 espeak)")
    parser.add_argument("--part-rows", type=int, default=64, help="turns per committed Parquet part")
    parser.add_argument("--voices", type=int, default=12, help="espeak voices the input is spoken in")
    args = parser.parse_args()

    made = time.perf_counter()
    turns = make_turns(args.rate, args.voices)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        (tmp / "coughs").mkdir()
        coughs = load_clips(str(write_coughs(tmp / "coughs")), "cough_dir")
        made = time.perf_counter() - made
        clock, audio_s, written = process(turns, coughs, args.turns, args.rate, args.part_rows, tmp / "run")

    def summary(group: tuple[str, ...]) -> dict[str, float]:
        cpu, wall = sum(clock.cpu[s] for s in group), sum(clock.wall[s] for s in group)
        return {"cpu_s": round(cpu, 3), "wall_s": round(wall, 3), "x_real_time_per_cpu_s": round(audio_s / cpu),
                "x_real_time_per_wall_s": round(audio_s / wall)}

    steps = {name: summary((name,)) for name in (*P5_STEPS, "qc")}
    steps["parquet (rows + to_table + commit)"] = summary(PARQUET_STEPS)
    p5, with_qc = summary(P5_STEPS), summary((*P5_STEPS, "qc"))
    p5_cpu, p5_wall = p5["x_real_time_per_cpu_s"], p5["x_real_time_per_wall_s"]
    result = {
        "machine": machine(), "load_average_1min": os.getloadavg()[0], "input_rate_hz": args.rate, "turns": args.turns, "distinct_turns": len(turns),
        "audio_s": round(audio_s, 1), "mean_turn_s": round(audio_s / args.turns, 2), "part_rows": args.part_rows,
        "parquet_mb": round(written / 2**20, 1), "input_made_in_s": round(made, 1),
        "steps": steps,
        "P5": {**p5, "ratio_to_target": round(p5_cpu / TARGET, 2)},
        "P5_and_qc": with_qc,
    }
    print(json.dumps(result, indent=2))
    print(f"P5: resample + cough splice + FLAC + Parquet = {p5_cpu:,.0f}x real time per CPU-second "
          f"({p5_wall:,.0f}x per wall second), {p5_cpu / TARGET:.2f} of the 1,000x target (target >= 1,000x)")


if __name__ == "__main__":
    main()
