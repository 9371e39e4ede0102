"""Shared fixtures: one real Ray cluster on loopback for the session, and small inputs."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pipeline.raycluster import LOOPBACK_ENV, local_head

if TYPE_CHECKING:
    from tests.llm_servers import FaultProxy

# Before anything imports ray in this process (pipeline/__init__ sets the loopback one).
for _key, _value in LOOPBACK_ENV.items():
    os.environ.setdefault(_key, _value)
# Credentials for the S3-compatible server the tests start on 127.0.0.1 (moto). Set before
# the Ray head starts, so its workers inherit them; no instance-metadata lookups.
# vLLM on CPU (ENVIRONMENT.md): a small KV cache, caches in a folder of the test session.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ["VLLM_CACHE_ROOT"] = tempfile.mkdtemp(prefix="speechmed-vllm-")
# A private Hugging Face datasets cache: loads in tests must read what the test wrote.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="speechmed-hf-")
os.environ.update({"AWS_ACCESS_KEY_ID": "speechmed-test", "AWS_SECRET_ACCESS_KEY": "speechmed-test",
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"})

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "pipeline" / "demo" / "sample_consultations.json"


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """A real `ray start --head` on 127.0.0.1 for the session, stopped at the end."""
    with local_head(num_cpus=2) as address:
        yield address


@pytest.fixture(scope="session")
def ray_connected(ray_address: str) -> Iterator[str]:
    """This test process joined to the session's cluster (drivers run in-process)."""
    import ray

    ray.init(address=ray_address, log_to_driver=False)
    try:
        yield ray_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Qwen2 model, made once per session (`speechmed tiny-model`)."""
    from pipeline.tinymodel import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def write_dialogues(path: Path, n: int, *, bad_every: int = 0) -> Path:
    """A ShareGPT file of `n` short, original Chinese consultations; every `bad_every`-th
    asks to upload a photo (the prefilter rejects it)."""
    records = []
    for i in range(n):
        ask = "我把化验单照片发给你看看。" if bad_every and i % bad_every == 0 else f"我最近{i % 7 + 2}天总是头疼，量血压150/95mmHg。"
        records.append({
            "id": f"dlg-{i:06d}",
            "conversations": [
                {"from": "human", "value": f"医生您好，我是今天第{i}位来咨询的。{ask}"},
                {"from": "gpt", "value": "头疼时有没有恶心或者看东西模糊？平时睡眠怎么样？"},
                {"from": "human", "value": "偶尔恶心，睡得不太好，每天睡5个小时。"},
                {"from": "gpt", "value": "建议到心内科复查血压，必要时做头部CT，规律作息。"},
            ],
        })
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def pipeline_config(source: Path, *, stages: list[dict], num_shards: int = 4, seed: int = 7,
                    exports: list[dict] | None = None, part_size: int = 64) -> dict:
    """A config mapping (as YAML would give) over one ShareGPT source."""
    return {
        "seed": seed,
        "num_shards": num_shards,
        "ingest_part_size": part_size,
        "sources": [{"name": "test", "format": "sharegpt", "path": str(source)}],
        "stages": stages,
        "exports": exports or [],
    }


def committed_ids(run: Path | str, stage: str) -> list[str]:
    """Every id in every committed part of a stage, duplicates kept (so they can be counted)."""
    import pyarrow.parquet as pq

    from storage.rundir import RunDir

    rundir = RunDir(str(run))
    ids: list[str] = []
    for commit in rundir.commits(stage).values():
        table = pq.read_table(rundir.abs(commit.output.path), columns=["id"], filesystem=rundir.loc.fs)
        ids += table.column("id").to_pylist()
    return ids


@pytest.fixture(scope="session")
def llm_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real vLLM OpenAI-compatible server on the tiny model, on 127.0.0.1; its /v1 URL."""
    from tests.llm_servers import vllm_server

    with vllm_server(tiny_model, tmp_path_factory.mktemp("vllm") / "server.log") as running:
        yield running.url


@pytest.fixture
def proxy(llm_server: str) -> Iterator["FaultProxy"]:
    """A fault-injecting proxy in front of `llm_server` (429s, a dead endpoint)."""
    from tests.llm_servers import FaultProxy

    p = FaultProxy(llm_server)
    yield p
    p.close()


# (gender word, age letter, speakers): no male child in the pool, on purpose.
POOL_SPEAKERS = [("female", "A", 3), ("female", "C", 5), ("male", "C", 4), ("male", "D", 2), ("female", "D", 1)]


# The two real 16 kHz AISHELL-1 recordings shipped in the s3tokenizer wheel (ENVIRONMENT.md),
# with their transcripts: the tests' reference voices.
AISHELL1_CLIPS = {"BAC009S0764W0121": "甚至出现交易几乎停滞的情况", "BAC009S0764W0122": "一二线城市虽然也处于调整中"}


def aishell1_clip(utt: str) -> Path:
    """Path of a shipped AISHELL-1 clip; found without importing s3tokenizer (its import
    needs torchaudio, which the CPU install removes)."""
    import importlib.util

    spec = importlib.util.find_spec("s3tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the dev extra installs s3tokenizer, whose wheel ships the AISHELL-1 test clips")
    return Path(next(iter(spec.submodule_search_locations))) / "assets" / f"{utt}.wav"


@pytest.fixture(scope="session")
def voice_pool(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A voice pool built from a generated Aishell-3-shaped folder: 15 speakers over five
    gender/age groups (no male child, on purpose), three clips each: the two real AISHELL-1
    recordings and a third that is too short."""
    import shutil

    import numpy as np
    import soundfile

    from pipeline.voices import build_pool

    root = tmp_path_factory.mktemp("aishell3")
    info, content, n = [], [], 0
    real = list(AISHELL1_CLIPS.items())
    for gender, letter, count in POOL_SPEAKERS:
        for _ in range(count):
            n += 1
            speaker = f"SSB{n:04d}"
            info.append(f"{speaker}\t{letter}\t{gender}\tnorth")
            for clip in range(1, 4):
                utt = f"{speaker}{clip:04d}"
                path = root / "train" / "wav" / speaker / f"{utt}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                if clip == 3:  # below min_clip_s
                    content.append(f"{utt}.wav\t头 tou2 疼 teng2")
                    soundfile.write(path, np.zeros(int(16_000 * 0.5)), 16_000)
                    continue
                source, text = real[clip - 1]
                content.append(f"{utt}.wav\t" + " ".join(f"{ch} x1" for ch in text))  # Aishell-3: char + pinyin
                shutil.copyfile(aishell1_clip(source), path)
    (root / "spk-info.txt").write_text("\n".join(info) + "\n", encoding="utf-8")
    (root / "train" / "content.txt").write_text("\n".join(content) + "\n", encoding="utf-8")
    out = str(root.parent / "pool")
    build_pool({"aishell3": str(root)}, out)
    return out


def _tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under `root`: what a write into it would change."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def spoken_run(tmp_path_factory: pytest.TempPathFactory, voice_pool: str, ray_connected: str) -> Iterator[Path]:
    """ONE small real run shared by the export, card-plot and training tests (each built its
    own before; the run is the slow part): a few sample consultations and the MedDG fixture
    dialogues (stated gender/age, a malformed line) -> prefilter -> normalize -> voice_match
    (the session's voice pool) -> synthesize with espeak, doctor turns too; exported as
    TextMedDataset and SpeechMedDataset with its ShareGPT layout.

    Read-only for the tests: one that alters a run copies it first (`shutil.copytree`). The
    teardown fails if any file of the run was written, added or removed in place."""
    from pipeline.config import parse_config
    from pipeline.driver import execute

    one = {"actors": 1, "num_cpus": 0.25}
    # Seed 7 samples 6 consultations of which the prefilter rejects 2 (too short): the
    # prefilter rejects rows too, in another count than ingest's (the card's rejection plot).
    cfg = {"seed": 7, "num_shards": 2, "ingest_part_size": 8, "sources": [
        {"name": "sample", "format": "sharegpt", "path": str(SAMPLE), "limit": 6},
        {"name": "meddg", "format": "meddg", "path": str(REPO / "tests" / "fixtures" / "sources" / "meddg")}],
        "stages": [{"name": "prefilter", "kind": "prefilter", "resources": one},
                   {"name": "normalize", "kind": "normalize", "resources": one},
                   {"name": "voice", "kind": "voice_match", "params": {"pool": voice_pool}, "resources": one},
                   {"name": "speak", "kind": "synthesize", "micro_batch_size": 2, "params": {"doctor_turns": True},
                    "resources": {"actors": 1, "num_cpus": 0.5}}],
        "exports": [{"name": "TextMedDataset", "stage": "normalize"},
                    {"name": "SpeechMedDataset", "stage": "speak", "sharegpt": True}]}
    run = tmp_path_factory.mktemp("spoken") / "run"
    execute(parse_config(cfg, base_dir=None, origin="test"), str(run), command="pytest", ray_address=ray_connected)
    before = _tree_state(run)
    yield run
    after = _tree_state(run)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a test wrote into the shared spoken_run in place (copy it first): {changed[:10]}"


def speechmed_process(*args: str, address: str, **kwargs: object) -> subprocess.Popen[str]:
    """`speechmed ARGS --address ADDRESS --json` as a child process (stderr kept for messages):
    the crash tests run drivers they can SIGKILL."""
    return subprocess.Popen(["speechmed", *args, "--address", address, "--json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kwargs)
