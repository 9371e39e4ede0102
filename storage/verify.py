"""`speechmed verify`: check every file of a run against what its markers recorded.

Reports a truncated or altered file (size / checksum), a deleted one, a row count that
differs from its marker, seals that disagree with their parts, missing parts of a sealed
shard, and foreign files that no marker accounts for.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow.parquet as pq

from storage.fs import is_temp, list_files
from storage.lock import LOCK_NAME
from storage.markers import ExportMarker, FileEntry, PartCommit, ShardSeal
from storage.rundir import COMMIT_SUFFIX, DATASETS, MANIFEST, RUN_JSON, SEALED, STAGE_STAMP, RunDir

_TOP_LEVEL_FILES = {RUN_JSON, LOCK_NAME, MANIFEST, "plan/plan.json"}


@dataclass(frozen=True)
class Problem:
    path: str
    what: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


def _check_file(rundir: RunDir, entry: FileEntry, sizes: dict[str, int]) -> list[Problem]:
    path = rundir.abs(entry.path)
    if path not in sizes:
        return [Problem(entry.path, "missing (recorded in a marker, not on storage)")]
    if sizes[path] != entry.bytes:
        return [Problem(entry.path, f"size {sizes[path]} bytes, marker says {entry.bytes}")]
    digest = hashlib.sha256()
    with rundir.loc.fs.open_input_stream(path) as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != entry.sha256:
        return [Problem(entry.path, "checksum differs from its marker (file altered)")]
    if not path.endswith(".parquet"):
        return []  # audio and JSON files of an export: size and checksum are the whole check
    rows = pq.ParquetFile(rundir.loc.fs.open_input_file(path)).metadata.num_rows
    if rows != entry.rows:
        return [Problem(entry.path, f"{rows} rows, marker says {entry.rows}")]
    return []


def _check_stage(rundir: RunDir, stage: str, sizes: dict[str, int]) -> tuple[list[Problem], set[str]]:
    problems: list[Problem] = []
    known = {rundir.abs(f"{stage}/{STAGE_STAMP}")}
    stamp = rundir.stamp(stage)
    commits: dict[tuple[int, int], PartCommit] = {}
    for path in sizes:
        if not path.endswith(COMMIT_SUFFIX) or not path.startswith(rundir.abs(stage) + "/") or is_temp(path):
            continue  # a temp marker is an uncommitted leftover, reported below
        known.add(path)
        try:
            commit = PartCommit.model_validate_json(rundir.loc.fs.open_input_stream(path).read())
        except ValueError as exc:
            problems.append(Problem(rundir.loc.rel(path), f"unreadable commit marker: {exc}"))
            continue
        commits[(commit.shard, commit.part)] = commit
        if stamp is not None and commit.fingerprint != stamp.fingerprint:
            problems.append(Problem(rundir.loc.rel(path), "committed under another fingerprint than the stage's"))
        for entry in commit.files():
            known.add(rundir.abs(entry.path))
            problems += _check_file(rundir, entry, sizes)
        if commit.rejected is None and commit.rows_rejected:
            problems.append(Problem(rundir.loc.rel(path), "rows rejected but no rejected file recorded"))
    for path in sizes:
        if not path.endswith(f"/{SEALED}") or not path.startswith(rundir.abs(stage) + "/"):
            continue
        known.add(path)
        try:
            seal = ShardSeal.model_validate_json(rundir.loc.fs.open_input_stream(path).read())
        except ValueError as exc:
            problems.append(Problem(rundir.loc.rel(path), f"unreadable seal: {exc}".replace("\n", " ")))
            continue
        parts = [commits.get((seal.shard, p)) for p in range(seal.parts)]
        missing = [p for p, c in enumerate(parts) if c is None]
        if missing:
            problems.append(Problem(rundir.loc.rel(path), f"sealed, but parts {missing[:5]} have no commit marker"))
            continue
        for field in ("rows_in", "rows_out", "rows_rejected"):
            total = sum(getattr(c, field) for c in parts)
            if total != getattr(seal, field):
                problems.append(Problem(rundir.loc.rel(path), f"{field} {getattr(seal, field)} but its parts sum to {total}"))
        extra = [p for (s, p) in commits if s == seal.shard and p >= seal.parts]
        if extra:
            problems.append(Problem(rundir.loc.rel(path), f"parts {extra[:5]} committed beyond the sealed count"))
    return problems, known


def verify(rundir: RunDir) -> list[Problem]:
    """Every problem found in the run directory; empty means the run is consistent."""
    sizes = list_files(rundir.loc, rundir.loc.root)
    problems: list[Problem] = []
    known = {rundir.abs(name) for name in _TOP_LEVEL_FILES}
    for stage in rundir.stages_on_disk():
        stage_problems, stage_known = _check_stage(rundir, stage, sizes)
        problems += stage_problems
        known |= stage_known
    for path in sizes:
        rel = rundir.loc.rel(path)
        if rel.startswith(f"{DATASETS}/") and rel.endswith("/_EXPORTED.json"):
            marker = ExportMarker.model_validate_json(rundir.loc.fs.open_input_stream(path).read())
            known.add(path)
            known.add(rundir.abs(f"{DATASETS}/{marker.name}/README.md"))
            for entry in marker.files:
                known.add(rundir.abs(entry.path))
                problems += _check_file(rundir, entry, sizes)
    for path in sorted(set(sizes) - known):
        rel = rundir.loc.rel(path)
        what = "uncommitted leftover (resume removes it)" if is_temp(path) or _is_ours(rel) else "foreign file: no marker accounts for it"
        problems.append(Problem(rel, what))
    return problems


def _is_ours(rel: str) -> bool:
    return rel.endswith(".parquet") and "/shard-" in rel
