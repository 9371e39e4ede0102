"""Acceptance of the spoken stages under a crash: the driver of a run (voice_match →
synthesize with espeak, cough splicing, audio checks that reject some dialogues) is
SIGKILLed while synthesize has committed some parts and not others, then resumed. The
resumed run picks the same voices, reference clips, cough clips and cough offsets as a
clean run (and the same audio, byte for byte), rejects the same dialogues for the same reasons, and every stage reconciles."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import yaml

from schemas import SynthesizedTurn, from_table
from storage.rundir import RunDir
from storage.verify import verify
from actors.audio import write_cough_like_clips
from tests.conftest import committed_ids, pipeline_config, speechmed_process as _speechmed

STAGES = ("ingest", "voice", "speak")


def _source(path: Path, count: int) -> Path:
    """MedDG-format cough consultations whose patients state gender and age ("（男，32岁）"),
    so voices are matched to pool speakers. In every 6th the second patient turn has
    nothing to say ("……"): silent audio that fails the audio checks on every attempt."""
    lines = []
    for i in range(count):
        gender, age = "男女"[i % 2], 20 + 7 * (i % 9)
        second = "……" if i % 6 == 5 else f"没有发烧<cough>，痰是白色的，第{i}号。"
        utterances = [("Patients", f"医生您好，我咳嗽<cough>已经{'三四五六七八'[i % 6]}天了，第{i}号（{gender}，{age}岁）"),
                      ("Doctor", "有没有发烧？痰是什么颜色？"), ("Patients", second), ("Doctor", "多喝水，注意休息。")]
        lines.append(f"dialog {i}")
        lines += [json.dumps({"id": who, "Sentence": text}, ensure_ascii=False) for who, text in utterances]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _coughs(folder: Path) -> Path:
    return write_cough_like_clips(folder, [(16_000, s) for s in (0.3, 0.45, 0.6)], seed=4)


def _config(tmp: Path, pool: str) -> Path:
    resources = {"actors": 2, "num_cpus": 0.25, "batch_timeout_s": 120}
    cfg = pipeline_config(
        _source(tmp / "train.txt", 48), num_shards=4, part_size=8, seed=5,
        stages=[{"name": "voice", "kind": "voice_match", "params": {"pool": pool}, "micro_batch_size": 4,
                 "resources": resources},
                {"name": "speak", "kind": "synthesize", "micro_batch_size": 1, "resources": resources,
                 "params": {"cough_dir": str(_coughs(tmp / "coughs")), "qc": {"max_attempts": 2}}}],
        exports=[{"name": "SpeechMedDataset", "stage": "speak"}])
    cfg["sources"][0].update(format="meddg", treatment="cough")
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def _turns(run: Path) -> dict[str, SynthesizedTurn]:
    rundir = RunDir(str(run))
    return {t.id: t for shard, seal in rundir.seals("speak").items()
            for t in from_table(rundir.read_output("speak", shard, seal.parts), SynthesizedTurn)}


def _rejected(run: Path) -> dict[str, str]:
    table = RunDir(str(run)).read_rejected("speak")
    return dict(zip(table.column("id").to_pylist(), table.column("reason").to_pylist())) if table else {}


def _committed_parts(run: Path) -> int:
    return sum(1 for _ in (run / "speak").glob("shard-*/part-*.commit.json")) if (run / "speak").exists() else 0


def test_killed_run_resumes_with_the_same_voices_clips_and_coughs(tmp_path: Path, ray_address: str, voice_pool: str) -> None:
    config = _config(tmp_path, voice_pool)
    clean = tmp_path / "clean"
    proc = _speechmed("run", str(config), "--run", str(clean), address=ray_address)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()

    crashed = tmp_path / "crashed"
    driver = _speechmed("run", str(config), "--run", str(crashed), address=ray_address, start_new_session=True)
    deadline = time.monotonic() + 240
    while _committed_parts(crashed) < 3 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    partial = _committed_parts(crashed)
    rundir = RunDir(str(crashed))
    assert partial >= 3 and len(rundir.seals("speak")) < 4, "the kill must land while synthesize is part-way"
    resume = _speechmed("resume", str(crashed), address=ray_address)
    assert resume.wait(timeout=300) == 0, resume.stderr.read()

    for stage in STAGES:
        ids = committed_ids(crashed, stage)
        assert not [i for i, n in Counter(ids).items() if n > 1], f"{stage} has duplicates"
        assert sorted(ids) == sorted(committed_ids(clean, stage)), f"{stage} ids differ from the clean run"
    ref, got = _turns(clean), _turns(crashed)
    assert ref.keys() == got.keys() and ref
    for turn_id, turn in ref.items():
        other = got[turn_id]
        assert other.voice == turn.voice  # speaker, reference clip, seed
        assert other.coughs == turn.coughs  # clip, offset and duration of every splice
        assert other.attempts == turn.attempts and other.audio == turn.audio
    assert sum(len(t.coughs) for t in ref.values()) >= len(ref)  # every patient turn has a cough
    # The speakers are the pool's, spread over more than one.
    assert len({t.voice.speaker_id for t in ref.values()}) > 1

    rejected = _rejected(clean)
    assert rejected == _rejected(crashed)
    assert set(rejected.values()) == {"synthesize.qc_failed"} and len(rejected) == 8  # dialogues 5, 11, ... 47
    seals = RunDir(str(crashed)).seals("speak")
    dialogues_in = sum(s.rows_in for s in seals.values())
    assert dialogues_in == 48 == len({t.dialogue_id for t in got.values()}) + len(rejected)
    assert verify(RunDir(str(crashed))) == []
