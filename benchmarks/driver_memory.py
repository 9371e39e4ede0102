"""Driver memory: peak RSS of the driver process at 100k vs 10k input rows.

The driver keeps bookkeeping only (rows stay in storage and actors; planning runs in a Ray
task), so its peak should not grow with the input. Target: ratio ≤ 1.2.

    python benchmarks/driver_memory.py [--small 10000] [--large 100000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _common import machine, peak_rss, ray_cluster, speechmed, write_config, write_dialogues

STAGES = [
    {"name": "prefilter", "kind": "prefilter", "micro_batch_size": 512,
     "resources": {"actors": 2, "num_cpus": 0.5}},
    {"name": "sim", "kind": "simulate", "micro_batch_size": 512,
     "resources": {"actors": 2, "num_cpus": 0.5}},
]


def measure(tmp: Path, address: str, rows: int, shards: int) -> dict:
    source = write_dialogues(tmp / f"in-{rows}.json", rows)
    config = write_config(tmp / f"cfg-{rows}.yaml", source, STAGES, shards, part_size=2048)
    proc = speechmed("run", str(config), "--run", str(tmp / f"run-{rows}"), address=address)
    sampler, peak = peak_rss(proc)
    out, err = proc.communicate()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"run failed: {err[-2000:]}")
    return {"rows": rows, "input_mb": round(source.stat().st_size / 2**20, 1),
            "driver_peak_rss_mb": round(peak["rss"] / 2**20, 1), "elapsed_s": json.loads(out)["elapsed_s"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, ray_cluster() as address:
        small = measure(Path(folder), address, args.small, args.shards)
        large = measure(Path(folder), address, args.large, args.shards)
    ratio = large["driver_peak_rss_mb"] / small["driver_peak_rss_mb"]
    print(json.dumps({"machine": machine(), "small": small, "large": large, "ratio": round(ratio, 3)}, indent=2))
    print(f"driver peak RSS {args.large} rows / {args.small} rows = {ratio:.3f} (target <= 1.2)")


if __name__ == "__main__":
    main()
