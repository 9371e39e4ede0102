"""`speechmed ingest`: one corpus, no Ray, counts by reason, Parquet out."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from typer.testing import CliRunner

from pipeline.cli import app
from tests.conftest import SAMPLE

runner = CliRunner()


def test_ingest_reports_counts_and_writes_parquet(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text(SAMPLE.read_text(encoding="utf-8")[:-200], encoding="utf-8")  # truncated array
    result = runner.invoke(app, ["ingest", "--source", "sharegpt", "--path", str(broken), "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["read"] == report["written"] + report["rejected"]
    assert report["by_reason"] == {"ingest.unreadable_file": 1}
    assert pq.read_table(tmp_path / "out" / "accepted.parquet").num_rows == report["written"] > 50
    (rejection,) = pq.read_table(tmp_path / "out" / "rejected.parquet").to_pylist()
    assert str(broken) in rejection["detail"]


def test_ingest_usage_errors_exit_2(tmp_path: Path) -> None:
    unknown = runner.invoke(app, ["ingest", "--source", "nope", "--path", str(SAMPLE), "--out", str(tmp_path / "o")])
    assert unknown.exit_code == 2 and "unknown source format 'nope'" in unknown.output
    missing = runner.invoke(app, ["ingest", "--source", "sharegpt", "--path", str(tmp_path / "none.json"), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "no such file" in missing.output
    assert not (tmp_path / "o").exists()
