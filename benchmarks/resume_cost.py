"""Resume cost: kill the driver at about 50% of a stage, resume, count recomputed rows.

Recomputed rows are those whose processing started before the kill but whose micro-batch
was never committed, so the resumed run does them again (the simulated engine traces every
call it starts). Target: recomputed ≤ workers × micro-batch size. Also checks that the
resume did no committed work again (rows processed by the resume = rows not committed).

    python benchmarks/resume_cost.py [--rows 4000] [--actors 4] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
from pathlib import Path

from _common import machine, ray_cluster, speechmed, write_config, write_dialogues

from storage.rundir import RunDir


def _traced(trace: Path) -> list[str]:
    return [line for f in sorted(trace.glob("*.txt")) for line in f.read_text().split()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--actors", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per call")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, ray_cluster() as address:
        tmp = Path(folder)
        trace = tmp / "trace"
        trace.mkdir()
        stage = {"name": "sim", "kind": "simulate", "micro_batch_size": args.batch,
                 "params": {"latency_base_s": args.latency, "trace_dir": str(trace)},
                 "resources": {"actors": args.actors, "num_cpus": 0.25, "max_shards_in_flight": 8}}
        config = write_config(tmp / "cfg.yaml", write_dialogues(tmp / "in.json", args.rows), [stage], 16)
        run = tmp / "run"
        rundir = RunDir(str(run))
        driver = speechmed("run", str(config), "--run", str(run), address=address, start_new_session=True)
        while sum(c.rows_in for c in rundir.commits("sim").values()) < args.rows // 2:
            time.sleep(0.02)
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        time.sleep(3)  # let Ray reap the dead job's actors before counting
        committed = sum(c.rows_in for c in rundir.commits("sim").values())
        started_before = _traced(trace)
        for f in trace.glob("*.txt"):
            f.unlink()
        resume = speechmed("resume", str(run), address=address)
        out, err = resume.communicate()
        if resume.returncode:
            raise SystemExit(f"resume failed: {err[-2000:]}")
        processed = json.loads(out)["rows_processed"]["sim"]
        redone = set(started_before) & set(_traced(trace))
    bound = args.actors * args.batch
    result = {"machine": machine(), "rows": args.rows, "actors": args.actors, "micro_batch": args.batch,
              "committed_at_kill": committed, "rows_processed_by_resume": processed,
              "rows_missing_at_kill": args.rows - committed, "recomputed_rows": len(redone), "bound": bound}
    print(json.dumps(result, indent=2))
    print(f"recomputed {len(redone)} rows after a kill at {committed / args.rows:.0%} "
          f"(bound workers x micro-batch = {bound}); resume redid committed work: "
          f"{'no' if processed == args.rows - committed else 'YES'}")


if __name__ == "__main__":
    main()
