"""Helpers shared by the benchmark scripts: a loopback Ray cluster, inputs, the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import yaml

from pipeline.raycluster import local_head

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}


def machine() -> str:
    return f"{platform.machine()}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}"


def ray_cluster(num_cpus: int | None = None) -> contextlib.AbstractContextManager[str]:
    """`ray start --head` on 127.0.0.1 with a private temp dir; yields its address."""
    return local_head(num_cpus)


def write_dialogues(path: Path, n: int) -> Path:
    """`n` original Chinese consultations in ShareGPT layout, written as a stream."""
    with path.open("w", encoding="utf-8") as f:
        f.write("[")
        for i in range(n):
            record = {"id": f"bench-{i:07d}", "conversations": [
                {"from": "human", "value": f"医生您好，我是第{i}位来咨询的，最近{i % 9 + 2}天总是头疼，血压150/95mmHg。"},
                {"from": "gpt", "value": "头疼时有没有恶心？建议到心内科复查血压。"}]}
            f.write(("," if i else "") + json.dumps(record, ensure_ascii=False))
        f.write("]")
    return path


def write_config(path: Path, source: Path, stages: list[dict], num_shards: int, part_size: int = 1024) -> Path:
    cfg = {"seed": 1, "num_shards": num_shards, "ingest_part_size": part_size,
           "sources": [{"name": "bench", "format": "sharegpt", "path": str(source)}], "stages": stages}
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def speechmed(*args: str, address: str, **kwargs: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args, "--address", address, "--json"],
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def peak_rss(proc: subprocess.Popen, interval: float = 0.05) -> tuple[threading.Thread, dict[str, int]]:
    """Sample the RSS of `proc` (alone, not its children) until it exits."""
    peak = {"rss": 0}

    def sample() -> None:
        try:
            p = psutil.Process(proc.pid)
            while proc.poll() is None:
                peak["rss"] = max(peak["rss"], p.memory_info().rss)
                time.sleep(interval)
        except psutil.NoSuchProcess:
            pass

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    return thread, peak
