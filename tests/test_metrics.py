"""Per-stage metrics through Ray's metrics API: the recent-rate window with exact figures,
then a real pipeline on the session's Ray whose metrics are scraped from the node's
Prometheus endpoint (127.0.0.1:<MetricsExportPort>/metrics) while it runs and after."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.config import parse_config
from pipeline.driver import execute
from pipeline.metrics import RateWindow
from pipeline.status import run_status
from storage.rundir import RunDir
from tests.conftest import pipeline_config, write_dialogues


def test_rate_window_counts_recent_parts_from_their_start():
    window = RateWindow(window_s=60)
    assert window.rate(now=5) == 0.0
    window.add(0, 10, 40)
    window.add(5, 20, 20)
    assert window.rate(now=20) == pytest.approx(60 / 20)  # both parts, since the first began
    assert window.rate(now=75) == pytest.approx(20 / 60)  # the first ended before the window
    assert window.rate(now=100) == 0.0  # a stalled stage decays to 0


def _scrape(port: int, run: str) -> dict[tuple[str, str], float]:
    """{(sample name, stage): value} of the speechmed series of one run (summed over the
    reporting processes: one here, the test's driver)."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    found: dict[tuple[str, str], float] = defaultdict(float)
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name.startswith("ray_speechmed_") and sample.labels.get("run") == run:
                found[(sample.name.removeprefix("ray_"), sample.labels["stage"])] += sample.value
    return dict(found)


def _stage(name: str, kind: str, **params: object) -> dict:
    return {"name": name, "kind": kind, "params": params, "micro_batch_size": 4,
            "resources": {"actors": 2, "num_cpus": 0.25, "batch_timeout_s": 60}}


@pytest.mark.timeout(300)
def test_stage_metrics_reach_prometheus(ray_connected: str, tmp_path: Path) -> None:
    import ray

    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["Alive"])
    source = write_dialogues(tmp_path / "in.json", 96, bad_every=6)
    # About 30 s of simulated engine time, so Ray's periodic export (about every 10 s)
    # happens while the stage runs.
    cfg = pipeline_config(source, num_shards=2, stages=[_stage("prefilter", "prefilter"),
                                                        _stage("sim", "simulate", latency_base_s=3.0)])
    run = tmp_path / "run"
    uri = RunDir(str(run)).uri
    outcome: dict = {}
    driver = threading.Thread(target=lambda: outcome.update(
        result=execute(parse_config(cfg, base_dir=None, origin="test"), str(run), command="pytest")))
    driver.start()

    live: dict[tuple[str, str], float] = {}
    while driver.is_alive():
        sample = _scrape(port, uri)
        if sample.get(("speechmed_items_per_second", "sim"), 0) > 0 and sample.get(("speechmed_parts_in_flight", "sim"), 0) > 0:
            live = sample
            break
        time.sleep(1)
    driver.join(timeout=240)
    assert "result" in outcome, "the run did not finish"
    assert live, "no scrape during the run showed the sim stage flowing"
    assert live[("speechmed_shards_in_flight", "sim")] >= 1
    assert 0 < live.get(("speechmed_rows_in_total", "sim"), 0) < 80

    stages = {s.name: s for s in run_status(RunDir(str(run))).stages}
    assert (stages["prefilter"].rows_rejected, stages["sim"].rows_in) == (16, 80)  # every 6th of 96 asks for a photo
    expected = {}
    for name in ("prefilter", "sim"):
        s = stages[name]
        expected |= {("speechmed_rows_in_total", name): s.rows_in, ("speechmed_rows_out_total", name): s.rows_out,
                     ("speechmed_parts_committed_total", name): len(RunDir(str(run)).commits(name)),
                     ("speechmed_shards_in_flight", name): 0, ("speechmed_parts_in_flight", name): 0,
                     ("speechmed_items_per_second", name): 0}
        if s.rows_rejected:  # Ray counters only exist once incremented
            expected[("speechmed_rows_rejected_total", name)] = s.rows_rejected
    deadline = time.monotonic() + 60
    final: dict[tuple[str, str], float] = {}
    while time.monotonic() < deadline:
        final = _scrape(port, uri)
        if all(final.get(key) == value for key, value in expected.items()):
            break
        time.sleep(1)
    assert {k: final.get(k) for k in expected} == expected
    assert ("speechmed_rows_rejected_total", "sim") not in final  # sim rejected nothing
