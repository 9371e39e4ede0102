"""Scheduler scale: 64 actors whose engine follows a GPU-like latency model.

Each call sleeps `base + per_item * batch` (a batched GPU engine's shape). Ideal linear
throughput is actors × batch / latency(batch); the script reports the measured steady-state
throughput (window: from the moment every actor has committed once, to the last dispatch
wave) as a ratio of it, and the machinery's overhead per shard and per part from a run
with a zero-latency engine. Target: ratio ≥ 0.90.

    python benchmarks/scheduler_scale.py [--actors 64] [--rows 40000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import machine, ray_cluster, speechmed, write_config, write_dialogues

from storage.rundir import RunDir


def _stage(actors: int, batch: int, base: float, per_item: float, shards_in_flight: int) -> dict:
    return {"name": "sim", "kind": "simulate", "micro_batch_size": batch,
            "params": {"latency_base_s": base, "latency_per_item_s": per_item},
            "resources": {"actors": actors, "num_cpus": 0.01, "max_shards_in_flight": shards_in_flight,
                          "batch_timeout_s": 600}}


def _run(tmp: Path, address: str, name: str, rows: int, shards: int, stage: dict) -> tuple[RunDir, float]:
    source = tmp / f"{name}.json"
    if not source.exists():
        write_dialogues(source, rows)
    config = write_config(tmp / f"{name}.yaml", source, [stage], shards)
    run = tmp / f"run-{name}"
    started = time.monotonic()
    proc = speechmed("run", str(config), "--run", str(run), address=address)
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"run failed: {err[-2000:]}")
    return RunDir(str(run)), time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--actors", type=int, default=64)
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--base", type=float, default=2.0, help="seconds per call")
    parser.add_argument("--per-item", type=float, default=0.01, help="seconds per item")
    parser.add_argument("--shards", type=int, default=64)
    args = parser.parse_args()

    latency = args.base + args.per_item * args.batch
    ideal = args.actors * args.batch / latency
    with tempfile.TemporaryDirectory() as folder, ray_cluster() as address:
        tmp = Path(folder)
        rundir, wall = _run(tmp, address, "scale", args.rows, args.shards,
                            _stage(args.actors, args.batch, args.base, args.per_item, args.shards))
        commits = sorted(rundir.commits("sim").values(), key=lambda c: c.committed_at)
        first_by_worker: dict[str, float] = {}
        for c in commits:
            first_by_worker.setdefault(c.worker, c.committed_at)
        t0 = max(first_by_worker.values())
        t1 = commits[-1].committed_at - latency  # exclude the last wave (the tail)
        in_window = sum(c.rows_in for c in commits if t0 < c.committed_at <= t1)
        measured = in_window / (t1 - t0)

        # Dispatch overhead: the same machinery with an engine that takes no time.
        zero, zero_wall = _run(tmp, address, "zero", args.rows // 4, 16, _stage(8, args.batch, 0.0, 0.0, 16))
        zc = zero.commits("sim").values()
        span = max(c.committed_at for c in zc) - min(c.committed_at - c.elapsed_s for c in zc)
        result = {
            "machine": machine(),
            "actors": args.actors, "batch": args.batch, "latency_per_call_s": latency,
            "rows": args.rows, "shards": args.shards, "workers_seen": len(first_by_worker),
            "ideal_rows_per_s": round(ideal, 1), "measured_rows_per_s": round(measured, 1),
            "ratio": round(measured / ideal, 3), "window_s": round(t1 - t0, 1), "wall_s": round(wall, 1),
            "zero_latency_parts": len(zc), "zero_latency_span_s": round(span, 2),
            # With an engine that takes no time, everything left is the machinery: read the
            # input, validate, commit (Parquet + marker + fence check), dispatch, seal.
            "overhead_per_part_actor_ms": round(1000 * span * 8 / len(zc), 1),
            "overhead_per_shard_ms": round(1000 * span / 16, 1),
        }
    print(json.dumps(result, indent=2))
    print(f"throughput / ideal linear = {result['ratio']:.3f} (target >= 0.90)")


if __name__ == "__main__":
    main()
