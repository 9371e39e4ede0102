"""`speechmed ingest`: run one source adapter over one path, without Ray, to look at a corpus.

Writes OUT/accepted.parquet (SourceDialogue rows) and OUT/rejected.parquet (Rejection rows)
in bounded batches, and returns the counts: read = written + rejected.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from actors.sources import SourceRef, source_format
from schemas import Rejection, SourceDialogue, Treatment, arrow_schema, to_table

BATCH = 2048


@dataclass
class IngestReport:
    source: str
    path: str
    read: int = 0
    written: int = 0
    rejected: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)


class _BatchWriter:
    """Rows of one record type into one Parquet file, a row group per batch."""

    def __init__(self, path: Path, model: type):
        self.path, self.model = path, model
        self.writer = pq.ParquetWriter(path, arrow_schema(model))
        self.rows: list = []

    def add(self, row: object) -> None:
        self.rows.append(row)
        if len(self.rows) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.writer.write_table(to_table(self.rows, self.model))
            self.rows = []

    def close(self) -> None:
        self.flush()
        self.writer.close()


def ingest_one(fmt: str, path: str, out: Path, *, name: str | None = None,
               treatment: Treatment | None = None, options: dict | None = None) -> IngestReport:
    cls = source_format(fmt)
    ref = SourceRef(name or fmt, path, treatment or cls.default_treatment, cls.Options.model_validate(options or {}))
    out.mkdir(parents=True, exist_ok=True)
    report = IngestReport(source=ref.name, path=path)
    reasons: Counter = Counter()
    accepted = _BatchWriter(out / "accepted.parquet", SourceDialogue)
    rejected = _BatchWriter(out / "rejected.parquet", Rejection)
    try:
        for item in cls().items(ref):
            report.read += 1
            if item.dialogue is not None:
                accepted.add(item.dialogue)
                report.written += 1
            else:
                rejected.add(item.rejection(ref.name))
                reasons[item.reason] += 1
                report.rejected += 1
    finally:
        accepted.close()
        rejected.close()
    report.by_reason = dict(reasons.most_common())
    report.outputs = {"accepted": str(out / "accepted.parquet"), "rejected": str(out / "rejected.parquet")}
    return report
