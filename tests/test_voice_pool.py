"""The reference-voice pool builder on generated Aishell-2/3-shaped folders with real
audio files: usable clips indexed with their speaker's attributes, every other clip or
metadata line excluded with a reason, and the CLI over both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.voices import voices


def tone(path: Path, seconds: float, rate: int = 16_000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(path, 0.3 * np.sin(2 * np.pi * 220 * t), rate, subtype="PCM_16")


@pytest.fixture
def corpora(tmp_path: Path) -> dict[str, Path]:
    a2 = tmp_path / "AISHELL-2"
    data = a2 / "iOS" / "data"
    data.mkdir(parents=True)
    (data / "spk_info.txt").write_text(
        "# spk_id\tage_group\tgender\taccent\nC0001\tA\t女\tNorth\nC0002\tD\tmale\tSouth\nC0003\tB\tX\tNorth\n",
        encoding="utf-8")
    (data / "trans.txt").write_text("\n".join([
        "IC0001W0001\t请问附近有药店吗",     # good
        "IC0001W0002\t我想挂一个内科的号",   # too long
        "IC0002W0001\t明天上午九点复查",     # corrupt file
        "IC0002W0002\t医生说要多喝水",       # missing file
        "IC0002W0003\t没有声音",             # zero samples
        "IC0003W0001\t这个人性别写错了",     # speaker quarantined (bad gender)
        "IC0001W0003\t",                     # empty transcript
        "IC0002W0004\t头疼好几天了",         # good
    ]) + "\n", encoding="utf-8")
    wav = data / "wav"
    tone(wav / "C0001" / "IC0001W0001.wav", 2.0)
    tone(wav / "C0001" / "IC0001W0002.wav", 31.0, rate=8_000)
    (wav / "C0002").mkdir(parents=True)
    (wav / "C0002" / "IC0002W0001.wav").write_bytes(b"RIFF\x00\x00not audio at all")
    soundfile.write(wav / "C0002" / "IC0002W0003.wav", np.zeros(0), 16_000)
    tone(wav / "C0003" / "IC0003W0001.wav", 1.0)
    tone(wav / "C0002" / "IC0002W0004.wav", 3.5, rate=44_100)

    a3 = tmp_path / "AISHELL-3"
    a3.mkdir()
    (a3 / "spk-info.txt").write_text("SSB0005\tC\tfemale\tsouth\nSSB0009\tB\tmale\tnorth\n", encoding="utf-8")
    for split, lines in (("train", ["SSB00050001.wav\t胃 wei4 不 bu4 舒 shu1 服 fu5", "SSB00090001.wav\tni3 hao3"]),
                         ("test", ["SSB00090002.wav\t做 zuo4 B bi4 超 chao1"])):
        (a3 / split).mkdir()
        (a3 / split / "content.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tone(a3 / "train" / "wav" / "SSB0005" / "SSB00050001.wav", 1.5, rate=44_100)
    tone(a3 / "test" / "wav" / "SSB0009" / "SSB00090002.wav", 2.5)
    return {"aishell2": a2, "aishell3": a3}


def test_build_and_show(tmp_path: Path, corpora: dict[str, Path]) -> None:
    pool = tmp_path / "pool"
    cli = CliRunner()
    built = cli.invoke(app, ["voices", "build", "--aishell2", str(corpora["aishell2"]), "--aishell3",
                             str(corpora["aishell3"]), "--out", str(pool), "--json"])
    assert built.exit_code == 0, built.output
    report = json.loads(built.output)
    assert report["clips"] == 4 and report["speakers"] == 4
    assert report["excluded_by_reason"] == {
        "voices.too_long": 1, "voices.unreadable_clip": 1, "voices.missing_clip": 1, "voices.empty_audio": 1,
        "voices.bad_gender": 1, "voices.unknown_speaker": 1, "voices.empty_transcript": 2}
    assert report["clips_by_gender_age"] == {"female/adult": 1, "female/child": 1, "male/elderly": 1, "male/young_adult": 1}

    clips = {v.clip_id: v for v in voices(str(pool))}
    assert list(clips) == ["aishell2:IC0001W0001", "aishell2:IC0002W0004", "aishell3:SSB00050001", "aishell3:SSB00090002"]
    first = clips["aishell2:IC0001W0001"]
    assert (first.speaker_id, first.gender, first.age_group, first.accent) == ("C0001", "female", "child", "North")
    assert first.duration_s == 2.0 and first.transcript == "请问附近有药店吗"
    assert Path(first.path).is_file()
    assert clips["aishell2:IC0002W0004"].duration_s == 3.5  # 44.1 kHz read from the header
    assert clips["aishell3:SSB00050001"].transcript == "胃不舒服"  # pinyin removed
    assert clips["aishell3:SSB00090002"].transcript == "做B超" and "/test/wav/" in clips["aishell3:SSB00090002"].path

    excluded = pq.read_table(pool / "excluded.parquet").to_pylist()
    by_id = {r["id"]: r for r in excluded}
    assert "31.0 s" in by_id["aishell2:IC0001W0002"]["detail"]
    assert "IC0002W0002.wav: no such file" in by_id["aishell2:IC0002W0002"]["detail"]
    assert "C0003" in by_id["aishell2:IC0003W0001"]["detail"]
    # Every transcript line is a clip or an exclusion: 8 + 3 lines = 4 clips + 7 exclusions by clip.
    assert len(clips) + sum(1 for r in excluded if r["reason"] != "voices.bad_gender") == 11

    shown = cli.invoke(app, ["voices", "show", str(pool)])
    assert shown.exit_code == 0 and "4 clips from 4 speakers" in shown.output and "voices.too_long 1" in shown.output


def test_cli_refuses_what_is_not_a_pool(tmp_path: Path) -> None:
    cli = CliRunner()
    shown = cli.invoke(app, ["voices", "show", str(tmp_path)])
    assert shown.exit_code == 2 and "not a voice pool" in shown.output
    none = cli.invoke(app, ["voices", "build", "--out", str(tmp_path / "p")])
    assert none.exit_code == 2 and "--aishell2" in none.output
    missing = cli.invoke(app, ["voices", "build", "--aishell3", str(tmp_path / "nope"), "--out", str(tmp_path / "p")])
    assert missing.exit_code == 2 and "no such folder" in missing.output


def test_pool_is_checked_against_its_info(tmp_path: Path, corpora: dict[str, Path]) -> None:
    from pipeline.voices import build_pool

    build_pool({"aishell3": str(corpora["aishell3"])}, str(tmp_path / "pool"))
    table = pq.read_table(tmp_path / "pool" / "voices.parquet")
    pq.write_table(table.slice(0, 1), tmp_path / "pool" / "voices.parquet")
    with pytest.raises(ValueError, match="checksum differs"):
        voices(str(tmp_path / "pool"))
