"""TTS stage throughput (issue 5, P7): the synthesize stage through the whole pipeline
against a bare loop over the same engine with the same number of workers, on the same
turns, voices and seeds.

Pipeline  `speechmed run` (driver, scheduler, `--workers` Ray actors of the synthesize
          stage with `--cpus` each, Parquet commits). The input is prepared first by a run
          of ingest → voice_match; the measured run adds the synthesize stage to the same
          run directory, so the earlier stages are already sealed and nothing else competes
          for the CPUs. Steady state: the sum of each actor's rate, turns (and seconds of
          audio) over its span from the start of its first micro-batch to its last commit
          (driver and actor start-up and the tail outside it); also over the stage's
          window, first start to last commit; with start-up: over the whole `speechmed run`.
Bare      `--workers` plain processes (multiprocessing, spawn; no Ray, no pipeline code),
          each looping over its share of the same dialogues (dealt round-robin): the
          engine's `begin_dialogue` (as the stage calls it, so the audio is the same), then
          per patient turn `EspeakEngine.synthesize` → `to_mono_16k` → `flac_bytes` → the
          FLAC written to a file of its own (the paper's scripts write each turn's audio to a
          file; the pipeline's output is persisted too, so a loop that drops its audio does
          less than the job). `--bare-no-write` drops it instead; `--bare-no-reset` leaves
          `begin_dialogue` out.
          Steady state: each worker from its first turn to its last (the engines are loaded
          before); with start-up: from starting the processes to the last result. The
          workers run at Ray's worker niceness (15), as the actors do, unless `--bare-nice`
          says otherwise: on a shared machine other users' processes would otherwise take
          CPU from the actors only. Run once before and once after the pipeline (no Ray
          running either time); the pipeline is compared with their mean, and with each,
          so a change in the machine's load shows.
Stage     the stage's own worker code (`PartRunner.run_part`: read the input slice,
          validate, synthesise, check, build rows, commit) with no Ray, in this process, on
          a few micro-batches, alternated with the bare loop over the same dialogues: the
          CPU per turn the stage and worker code add by themselves.

The machine is shared, so wall-clock figures move with other users' load. The script also
samples the CPU seconds of every process of the run (the synthesize actors, the driver,
Ray's daemons and idle workers) and of the bare workers, and reports the CPU each side
spends per turn inside its window: a figure other users' load moves much less, and the
breakdown of the pipeline's extra cost.

The stage also runs the audio checks (`qc_scores`) on every turn; `--bare-qc` puts them in
the bare loop too, to separate their cost from the machinery's. An espeak engine
serialises its calls (a lock around its copy of libespeak-ng), so a worker is a process
with one engine on both sides. Target: pipeline / bare ≥ 0.90.

    python benchmarks/tts_stage.py [--dialogues 1200] [--workers 2] [--cpus 0.5] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow.parquet as pq
import soundfile
from _common import REPO, machine, ray_cluster, speechmed, write_config

from actors.audio import RATE, flac_bytes, to_mono_16k
from actors.audio_qc import qc_scores
from actors.engines.espeak_engine import EspeakEngine
from actors.engines.tts import DialogueVoice, TTSConfig
from actors.worker import PartRunner
from pipeline.config import load_config
from pipeline.driver import stage_fingerprints, stage_specs
from pipeline.voices import build_pool
from schemas import SourceDialogue, VoiceChoice, from_table
from storage.markers import PartCommit
from storage.rundir import RunDir

TARGET = 0.90
# Ray starts its worker processes, the synthesize actors among them, at this niceness
# (`RAY_worker_niceness`, 15 by default), below every ordinary process on the machine.
RAY_WORKER_NICENESS = int(os.environ.get("RAY_worker_niceness", 15))
SAMPLE = REPO / "pipeline" / "demo" / "sample_consultations.json"
Job = tuple[str, VoiceChoice, int]


def write_source(path: Path, n: int) -> Path:
    """`n` consultations in ShareGPT layout: the bundled sample ones, repeated; each repeat
    opens with its own greeting, since ingestion drops duplicates by content."""
    sample = json.loads(SAMPLE.read_text(encoding="utf-8"))
    records = []
    for k in range(n):
        base, repeat = sample[k % len(sample)], k // len(sample)
        turns = [dict(t) for t in base["conversations"]]
        if repeat:
            turns[0]["value"] = f"医生您好，这是我第{repeat + 1}次来问。{turns[0]['value']}"
        records.append({"id": f"bench-{k:06d}", "conversations": turns})
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def write_pool(folder: Path) -> str:
    """A small voice pool from a generated Aishell-3-shaped folder (the voice_match stage
    needs one; the sample dialogues carry no gender or age, so every voice is a seeded
    random timbre)."""
    root = folder / "aishell3"
    info, content = [], []
    for n, (gender, letter) in enumerate([("female", "B"), ("female", "C"), ("male", "B"), ("male", "C")], start=1):
        speaker = f"SSB{n:04d}"
        info.append(f"{speaker}\t{letter}\t{gender}\tnorth")
        for clip in (1, 2):
            path = root / "train" / "wav" / speaker / f"{speaker}{clip:04d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, np.zeros(int(1.5 * RATE)), RATE)
            content.append(f"{path.name}\t头 tou2 疼 teng2")
    (root / "spk-info.txt").write_text("\n".join(info) + "\n", encoding="utf-8")
    (root / "train" / "content.txt").write_text("\n".join(content) + "\n", encoding="utf-8")
    build_pool({"aishell3": str(root)}, str(folder / "pool"))
    return str(folder / "pool")


def _stages(pool: str, args: argparse.Namespace, speak: bool) -> list[dict]:
    stages = [{"name": "voice", "kind": "voice_match", "micro_batch_size": 256, "params": {"pool": pool},
               "resources": {"actors": 1, "num_cpus": 0.25}}]
    if speak:
        stages.append({"name": "speak", "kind": "synthesize", "micro_batch_size": args.batch,
                       "resources": {"actors": args.workers, "num_cpus": args.cpus}})
    return stages


class CpuSampler:
    """CPU seconds of every process of one local Ray head (its daemons and their children,
    the workers) and of a driver process, sampled every `interval` seconds with the
    machine's CPU times, so the CPU spent in any window can be read afterwards. A process's
    last sample stands after it exits."""

    def __init__(self, address: str, interval: float = 0.25):
        port = re.compile(rf"\b{address.rsplit(':', 1)[1]}\b")
        self.roots = [p for p in psutil.process_iter(["cmdline"]) if port.search(" ".join(p.info["cmdline"] or []))]
        self.interval = interval
        self.driver: psutil.Process | None = None
        self.samples: list[tuple[float, Any, dict[int, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self, driver_pid: int) -> None:
        self.driver = psutil.Process(driver_pid)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def _sample(self) -> None:
        # One pass over the process table (a few ms): parents, then the roots' descendants.
        table = {p.pid: p.info for p in psutil.process_iter(["ppid", "cpu_times"])}
        ours = {p.pid for p in self.roots} | ({self.driver.pid} if self.driver else set())
        grown = True
        while grown:
            new = {pid for pid, info in table.items() if info["ppid"] in ours} - ours
            ours, grown = ours | new, bool(new)
        cpu = {pid: table[pid]["cpu_times"].user + table[pid]["cpu_times"].system
               for pid in ours if pid in table and table[pid]["cpu_times"] is not None}
        self.samples.append((time.time(), psutil.cpu_times(), cpu))

    def _at(self, t: float) -> tuple[Any, dict[int, float]]:
        """Machine CPU times and each process's CPU seconds at `t`, interpolated between
        the samples around it."""
        before = [sample for sample in self.samples if sample[0] <= t] or self.samples[:1]
        w0, m0, _ = before[-1]
        w1, m1, c1 = next((sample for sample in self.samples if sample[0] > t), before[-1])
        f = (t - w0) / (w1 - w0) if w1 > w0 else 0.0
        seen: dict[int, float] = {}
        for _, _, cpu in before:
            seen.update(cpu)
        at = {pid: v + f * (c1.get(pid, v) - v) for pid, v in seen.items()}
        for pid, v in c1.items():
            at.setdefault(pid, f * v)  # started between the two samples
        return type(m0)(*(a + f * (b - a) for a, b in zip(m0, m1))), at

    def window(self, t0: float, t1: float, groups: dict[str, set[int]]) -> dict[str, float]:
        """CPU seconds spent in [t0, t1]: per group of pids, the driver, the rest (Ray's
        daemons and idle workers), and the machine's other users."""
        (m0, c0), (m1, c1) = self._at(t0), self._at(t1)
        spent = {pid: c1[pid] - c0.get(pid, 0.0) for pid in c1}
        driver = {self.driver.pid} if self.driver else set()
        out = {name: sum(spent.get(pid, 0.0) for pid in pids) for name, pids in groups.items()}
        out["driver"] = sum(spent.get(pid, 0.0) for pid in driver)
        out["ray_daemons_and_other_workers"] = sum(v for pid, v in spent.items()
                                                   if pid not in driver and not any(pid in g for g in groups.values()))
        out["other_users"] = max(_busy(m1) - _busy(m0) - sum(out.values()), 0.0)
        return out


def _busy(times: Any) -> float:
    """Busy CPU seconds of the machine in a `psutil.cpu_times()`."""
    return sum(times) - times.idle - times.iowait


def _run(config: Path, run: Path, address: str, sampler: CpuSampler | None = None) -> float:
    started = time.perf_counter()
    proc = speechmed("run", str(config), "--run", str(run), address=address)
    if sampler:
        sampler.start(proc.pid)
    _, err = proc.communicate()
    if sampler:
        sampler.stop()
    if proc.returncode:
        raise SystemExit(f"pipeline failed: {err[-3000:]}")
    return time.perf_counter() - started


def pipeline_side(rundir: RunDir, wall: float, sampler: CpuSampler) -> dict:
    commits = list(rundir.commits("speak").values())
    tables = [pq.read_table(rundir.abs(c.output.path), columns=["duration_s", "attempts"], filesystem=rundir.loc.fs)
              for c in commits]
    by_worker: dict[str, list[tuple[PartCommit, float]]] = defaultdict(list)
    for commit, table in zip(commits, tables):
        by_worker[commit.worker].append((commit, float(np.sum(table["duration_s"]))))
    workers = []
    for worker, done in sorted(by_worker.items()):
        pid = int(worker.rsplit(":", 1)[1])
        done.sort(key=lambda d: d[0].committed_at)
        (first, _), end = done[0], done[-1][0].committed_at

        def span(start: float, rest: list[tuple[PartCommit, float]]) -> dict:
            return {"span_s": end - start, "turns": sum(c.rows_out for c, _ in rest), "audio_s": sum(a for _, a in rest),
                    "cpu_s": sampler.window(start, end, {"actor": {pid}})["actor"]}

        whole = span(first.committed_at - first.elapsed_s, done)
        workers.append({"pid": pid, "parts": len(done), "all": whole,
                        "warm": span(first.committed_at, done[1:]) if len(done) > 1 else whole,
                        # time inside run_part; the rest is waiting for the next call
                        "busy_share": sum(c.elapsed_s for c, _ in done) / (end - first.committed_at + first.elapsed_s)})
    first_start, last = min(c.committed_at - c.elapsed_s for c in commits), max(c.committed_at for c in commits)
    turns = sum(c.rows_out for c in commits)
    cpu = sampler.window(first_start, last, {"synthesize_actors": {w["pid"] for w in workers}})
    rejected = rundir.read_rejected("speak")
    warm_turns = sum(w["warm"]["turns"] for w in workers)
    return {"wall_s": wall, "window_s": last - first_start, "parts": len(commits), "turns": turns,
            "audio_s": sum(float(np.sum(t["duration_s"])) for t in tables),
            "dialogues": sum(c.rows_in for c in commits), "rejected_dialogues": sum(c.rows_rejected for c in commits),
            "rejected": [f"{r['id']}: {r['detail'][:160]}" for r in (rejected.to_pylist() if rejected else [])],
            "resynthesised_turns": sum(int((np.asarray(t["attempts"]) > 1).sum()) for t in tables),
            "workers": workers, "cpu_in_window_s": cpu,
            "cpu_ms_per_turn": {"synthesize_actors": 1000 * sum(w["warm"]["cpu_s"] for w in workers) / warm_turns,
                                "driver": 1000 * cpu["driver"] / turns,
                                "ray_daemons_and_other_workers": 1000 * cpu["ray_daemons_and_other_workers"] / turns}}


def per_worker(side: dict, which: str) -> dict:
    """Throughput as the sum of each worker's own rate over its `which` span."""
    return {"turns_per_s": sum(w[which]["turns"] / w[which]["span_s"] for w in side["workers"]),
            "audio_s_per_s": sum(w[which]["audio_s"] / w[which]["span_s"] for w in side["workers"])}


def jobs_of(rundir: RunDir) -> dict[int, list[list[Job]]]:
    """Per shard, per dialogue (in the stage's order), the turns the synthesize stage
    speaks, with the voice and first-attempt seed it uses."""
    shards = {}
    for shard, seal in sorted(rundir.seals("voice").items()):
        dialogues = from_table(rundir.read_output("voice", shard, seal.parts), SourceDialogue)
        shards[shard] = [[(t.speech_text if t.speech_text is not None else t.text, d.voice,
                           (d.voice.seed + 1_000_003 * i) % 2**31) for i, t in enumerate(d.turns) if t.role == "patient"]
                         for d in dialogues]
    return shards


@dataclass(frozen=True)
class Bare:
    """What the bare loop does besides synthesising: the audio checks, the engine's
    per-dialogue reset, writing each turn's FLAC to a file of its own in `write_to` (as the
    paper's scripts write each turn's audio; None: the encoded bytes are dropped)."""

    with_qc: bool
    reset: bool
    write_to: str | None


def bare_loop(engine: EspeakEngine, dialogues: list[list[Job]], bare: Bare, warm_after: int = 0) -> dict:
    """The bare loop over some dialogues: seconds per step, turns, audio; and where it
    stood (time, CPU, turns, audio) after the first `warm_after` dialogues."""
    steps = dict.fromkeys(("begin_dialogue", "engine", "resample", "qc", "flac", "write"), 0.0)
    folder = Path(bare.write_to, str(os.getpid())) if bare.write_to else None
    if folder:
        folder.mkdir(parents=True, exist_ok=True)
    turns, audio_s, flac, mark = 0, 0.0, 0, None
    for k, jobs in enumerate(dialogues):
        if k == warm_after:
            mark = {"at": time.time(), "cpu_s": time.process_time(), "turns": turns, "audio_s": audio_s}
        t0 = time.perf_counter()
        if bare.reset:
            engine.begin_dialogue()  # as the stage does: the dialogue's audio independent of what came before
        steps["begin_dialogue"] += time.perf_counter() - t0
        voice_state = DialogueVoice()
        for text, voice, seed in jobs:
            t0 = time.perf_counter()
            samples, rate = engine.synthesize(text, voice, seed, voice_state)
            t1 = time.perf_counter()
            audio = to_mono_16k(samples, rate)
            t2 = time.perf_counter()
            if bare.with_qc:
                qc_scores(audio, RATE, text)
            t3 = time.perf_counter()
            encoded = flac_bytes(audio)
            flac += len(encoded)
            t4 = time.perf_counter()
            if folder:
                (folder / f"{turns}.flac").write_bytes(encoded)
            t5 = time.perf_counter()
            for name, seconds in zip(("engine", "resample", "qc", "flac", "write"),
                                     (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                steps[name] += seconds
            turns, audio_s = turns + 1, audio_s + len(audio) / RATE
    return {"turns": turns, "audio_s": audio_s, "flac_bytes": flac, "steps_s": steps, "mark": mark}


def bare_worker(dialogues: list[list[Job]], bare: Bare, niceness: int, warm_after: int,
                ready: mp.Barrier, results: mp.Queue) -> None:
    """One plain process: the engine, then the bare loop over its dialogues."""
    os.nice(niceness)
    engine = EspeakEngine(TTSConfig())  # the stage's default engine configuration
    ready.wait()
    started, cpu = time.time(), time.process_time()
    done = bare_loop(engine, dialogues, bare, warm_after)
    finished, cpu_end = time.time(), time.process_time()
    mark = done.pop("mark") or {"at": started, "cpu_s": cpu, "turns": 0, "audio_s": 0.0}  # fewer dialogues than that
    results.put({**done, "all": {"span_s": finished - started, "turns": done["turns"], "audio_s": done["audio_s"],
                                 "cpu_s": cpu_end - cpu},
                 "warm": {"span_s": finished - mark["at"], "turns": done["turns"] - mark["turns"],
                          "audio_s": done["audio_s"] - mark["audio_s"], "cpu_s": cpu_end - mark["cpu_s"]},
                 "started": started, "finished": finished})
    engine.close()


def bare_side(dialogues: list[list[Job]], workers: int, bare: Bare, niceness: int, warm_after: int) -> dict:
    ctx = mp.get_context("spawn")
    ready, results = ctx.Barrier(workers + 1), ctx.Queue()  # the workers and this process
    shares = [dialogues[w::workers] for w in range(workers)]
    load = os.getloadavg()[0]
    began = time.time()
    procs = [ctx.Process(target=bare_worker, args=(share, bare, niceness, warm_after, ready, results))
             for share in shares]
    for p in procs:
        p.start()
    ready.wait()
    cpu_before = psutil.cpu_times()
    done = [results.get() for _ in procs]
    cpu_after, finished = psutil.cpu_times(), time.time()
    for p in procs:
        p.join()
    start, end = min(d["started"] for d in done), max(d["finished"] for d in done)
    turns, cpu = sum(d["turns"] for d in done), sum(d["all"]["cpu_s"] for d in done)
    machine_busy = _busy(cpu_after) - _busy(cpu_before)
    return {"load_average_1min_before": load, "wall_s": finished - began, "window_s": end - start,
            "startup_s": start - began, "dialogues": len(dialogues), "turns": turns,
            "audio_s": sum(d["audio_s"] for d in done), "workers": [{k: d[k] for k in ("all", "warm")} for d in done],
            "begin_dialogue_ms_per_dialogue": 1000 * sum(d["steps_s"]["begin_dialogue"] for d in done) / len(dialogues),
            "steps_ms_per_turn": {k: 1000 * sum(d["steps_s"][k] for d in done) / turns for k in done[0]["steps_s"]},
            # CPU the workers got while looping: well under 1 means other users had the cores.
            "cpu_share": cpu / sum(d["all"]["span_s"] for d in done),
            "cpu_in_window_s": {"workers": cpu, "other_users": max(machine_busy - cpu, 0.0)},
            "cpu_ms_per_turn": 1000 * sum(d["warm"]["cpu_s"] for d in done) / sum(d["warm"]["turns"] for d in done),
            "flac_mb": sum(d["flac_bytes"] for d in done) / 2**20}


def in_process_side(rundir: RunDir, config: Path, shards: dict[int, list[list[Job]]], batch: int, parts: int,
                    bare: Bare) -> dict:
    """`PartRunner.run_part` in this process, no Ray, on the first `parts` micro-batches,
    and the bare loop over the same dialogues in the same process, twice in turn after a
    warm-up: CPU per turn of each."""
    cfg = load_config(str(config))
    spec = next(s for s in stage_specs(cfg, stage_fingerprints(cfg)) if s.name == "speak")
    seals = rundir.seals("voice")
    calls = [(shard, part) for shard in sorted(shards) for part in range(-(-len(shards[shard]) // batch))][:parts]
    dialogues = [d for shard, part in calls for d in shards[shard][part * batch:(part + 1) * batch]]
    runner, engine = PartRunner(rundir.uri, spec, None, "in-process"), EspeakEngine(TTSConfig())
    # Untimed warm-up: the first call reads the shard and touches code and data once.
    runner.run_part(*calls[0], seals[calls[0][0]].parts)
    bare_loop(engine, shards[calls[0][0]][:batch], bare)
    rounds = []
    for _ in range(2):
        cpu = time.process_time()
        turns = sum(runner.run_part(shard, part, seals[shard].parts).rows_out for shard, part in calls)
        stage_ms = 1000 * (time.process_time() - cpu) / turns
        cpu = time.process_time()
        looped = bare_loop(engine, dialogues, bare)
        bare_ms = 1000 * (time.process_time() - cpu) / looped["turns"]
        rounds.append({"stage_ms_per_turn": stage_ms, "bare_ms_per_turn": bare_ms, "ratio": bare_ms / stage_ms})
    runner.close()
    engine.close()
    return {"parts": len(calls), "turns": turns, "rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dialogues", type=int, default=1200)
    parser.add_argument("--workers", type=int, default=2, help="synthesize actors, and bare processes")
    parser.add_argument("--cpus", type=float, default=0.5, help="Ray CPUs per actor: fractional, so the actors "
                        "cannot starve the run's other tasks on a small node")
    parser.add_argument("--batch", type=int, default=32, help="synthesize micro-batch size (dialogues)")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--in-process-parts", type=int, default=6,
                        help="micro-batches the stage's worker code runs in this process, without Ray")
    parser.add_argument("--bare-nice", type=int, default=RAY_WORKER_NICENESS,
                        help="niceness of the bare workers; default: that of Ray's workers, so that other users' "
                        "load takes the same share from both sides (0: an ordinary process)")
    parser.add_argument("--bare-qc", action="store_true", help="the bare loop also runs the stage's audio checks")
    parser.add_argument("--bare-no-write", action="store_true",
                        help="the bare loop drops each turn's FLAC instead of writing it to a file")
    parser.add_argument("--bare-no-reset", action="store_true",
                        help="the bare loop skips the engine's per-dialogue reset (`begin_dialogue`) the stage makes")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        source = write_source(tmp / "in.json", args.dialogues)
        pool = write_pool(tmp)
        run, rundir = tmp / "run", RunDir(str(tmp / "run"))
        with ray_cluster() as address:
            _run(write_config(tmp / "voices.yaml", source, _stages(pool, args, speak=False), args.shards), run, address)
        shards = jobs_of(rundir)
        dialogues = [d for shard in sorted(shards) for d in shards[shard]]
        # Each bare worker's steady state starts after as many dialogues as an actor's first micro-batch.
        options = Bare(with_qc=args.bare_qc, reset=not args.bare_no_reset,
                       write_to=None if args.bare_no_write else str(tmp / "bare"))
        bare_args = (dialogues, args.workers, options, args.bare_nice, args.batch)
        # Bare runs before and after the pipeline's (each with no Ray running), so a change
        # in the machine's load during the benchmark shows up as a difference between them.
        bare = [bare_side(*bare_args)]
        with ray_cluster() as address:
            config = write_config(tmp / "speak.yaml", source, _stages(pool, args, speak=True), args.shards)
            load, sampler = os.getloadavg()[0], CpuSampler(address)
            wall = _run(config, run, address, sampler)
            pipe = {"load_average_1min_before": load, **pipeline_side(rundir, wall, sampler)}
        bare.append(bare_side(*bare_args))
        # Last: it commits its parts over the measured run's (the same names and rows).
        in_process = in_process_side(rundir, config, shards, args.batch, args.in_process_parts, options)

    def compare(rate: Callable[[dict], dict]) -> dict:
        runs = [rate(b) for b in bare]
        mean = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
        piped = rate(pipe)
        return {"bare_runs": runs, "bare_mean": mean, "pipeline": piped,
                "ratio_audio": piped["audio_s_per_s"] / mean["audio_s_per_s"],
                "ratio_turns": piped["turns_per_s"] / mean["turns_per_s"],
                "ratio_audio_per_bare_run": [piped["audio_s_per_s"] / r["audio_s_per_s"] for r in runs]}

    def overall(seconds: str) -> Callable[[dict], dict]:
        return lambda side: {"turns_per_s": side["turns"] / side[seconds], "audio_s_per_s": side["audio_s"] / side[seconds]}

    bare_cpu = sum(b["cpu_ms_per_turn"] for b in bare) / len(bare)
    pipe_cpu = sum(pipe["cpu_ms_per_turn"].values())
    result = {
        "machine": machine(), "engine": "espeak", "dialogues_written": args.dialogues, "workers": args.workers,
        "cpus_per_actor": args.cpus, "micro_batch": args.batch, "shards": args.shards, "bare_qc": args.bare_qc,
        "bare_reset": not args.bare_no_reset, "bare_writes": not args.bare_no_write, "bare_niceness": args.bare_nice,
        "pipeline": pipe, "bare": bare, "in_process": in_process,
        # Steady state: the sum of the workers' own rates, each from the end of its first
        # micro-batch (an actor's first call also pays first-use costs) to its last turn;
        # then from its first turn; then first start to last end over all workers; then
        # with start-up.
        "steady": compare(lambda side: per_worker(side, "warm")),
        "from_first_turn": compare(lambda side: per_worker(side, "all")),
        "window": compare(overall("window_s")), "with_startup": compare(overall("wall_s")),
        # CPU per turn in the steady state: bare / pipeline (the actors, plus the driver
        # and Ray's daemons over the window), then / the actors alone. Other users' load
        # moves it less than the wall-clock figures.
        "cpu_per_turn": {"bare_ms": bare_cpu, "pipeline_ms": pipe_cpu, "ratio": bare_cpu / pipe_cpu,
                         "ratio_actors_only": bare_cpu / pipe["cpu_ms_per_turn"]["synthesize_actors"]},
    }
    print(json.dumps(result, indent=2))
    steady, first, window, cold = (result[k] for k in ("steady", "from_first_turn", "window", "with_startup"))
    before, after = (r["audio_s_per_s"] for r in steady["bare_runs"])
    print(f"P7 steady state: pipeline {steady['pipeline']['audio_s_per_s']:.0f} s of audio/s "
          f"({steady['pipeline']['turns_per_s']:.1f} turns/s) vs bare loop {steady['bare_mean']['audio_s_per_s']:.0f} "
          f"({steady['bare_mean']['turns_per_s']:.1f}; runs before/after: {before:.0f}, {after:.0f}) "
          f"= {steady['ratio_audio']:.3f} (target >= {TARGET}); from the first turn {first['ratio_audio']:.3f}; "
          f"first start to last end {window['ratio_audio']:.3f}; with start-up {cold['ratio_audio']:.3f}")
    cpu = result["cpu_per_turn"]
    print(f"CPU per turn: bare {cpu['bare_ms']:.1f} ms vs pipeline {cpu['pipeline_ms']:.1f} ms = {cpu['ratio']:.3f} "
          f"(synthesize actors alone: {cpu['ratio_actors_only']:.3f})")
    print("stage and worker code without Ray, CPU per turn, bare / PartRunner in one process: "
          + ", ".join(f"{r['bare_ms_per_turn']:.1f} / {r['stage_ms_per_turn']:.1f} ms = {r['ratio']:.3f}"
                      for r in in_process["rounds"]))


if __name__ == "__main__":
    main()
