"""`speechmed verify`: check every file of a run against what its markers recorded.

Reports a truncated or altered file (size / checksum), a deleted one, a row count that
differs from its marker, seals that disagree with their parts, missing parts of a sealed
shard, markers, seals, stage stamps, run.json, the plan or the manifest that cannot be
read, manifest rows that disagree with the markers, and foreign files that no marker accounts for. Files an interrupted run leaves
(temporary files, parts without a marker, an export without its marker) are reported as
uncommitted leftovers, which `speechmed resume` removes or redoes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TypeVar

import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel

from storage.fs import is_temp, list_files
from storage.lock import LOCK_NAME
from storage.manifest import MANIFEST_SCHEMA, manifest_rows
from storage.markers import ExportMarker, FileEntry, PartCommit, RunInfo, ShardSeal, StageStamp
from storage.rundir import COMMIT_SUFFIX, DATASETS, MANIFEST, RUN_JSON, SEALED, STAGE_STAMP, RunDir

PLAN_JSON = "plan/plan.json"
EXPORTED = "_EXPORTED.json"
_TOP_LEVEL_FILES = {RUN_JSON, LOCK_NAME, MANIFEST, PLAN_JSON}
M = TypeVar("M", bound=BaseModel)


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


def _read(rundir: RunDir, path: str, model: type[M]) -> tuple[M | None, str]:
    """A marker file parsed, or None and why not (one line)."""
    try:
        return model.model_validate_json(rundir.loc.fs.open_input_stream(path).read()), ""
    except ValueError as exc:
        return None, str(exc).replace("\n", " ")


def _marker(rundir: RunDir, path: str, model: type[M], what: str, problems: list[Problem]) -> M | None:
    """`_read`, with an unreadable marker added to `problems` as "unreadable <what>"."""
    marker, why = _read(rundir, path, model)
    if marker is None:
        problems.append(Problem(rundir.loc.rel(path), f"unreadable {what}: {why}"))
    return marker


@dataclass
class _Stage:
    """What checking one stage found: its problems, the files its markers account for, and
    the markers it read (the manifest is compared with them)."""

    problems: list[Problem]
    known: set[str]
    commits: dict[tuple[int, int], PartCommit]
    sealed: set[int]


def _check_stage(rundir: RunDir, stage: str, stamp: StageStamp | None, sizes: dict[str, int]) -> _Stage:
    problems: list[Problem] = []
    known = {rundir.abs(f"{stage}/{STAGE_STAMP}")}
    commits: dict[tuple[int, int], PartCommit] = {}
    sealed: set[int] = set()
    for path in sizes:
        if not path.endswith(COMMIT_SUFFIX) or not path.startswith(rundir.abs(stage) + "/") or is_temp(path):
            continue  # a temp marker is an uncommitted leftover, reported below
        known.add(path)
        commit = _marker(rundir, path, PartCommit, "commit marker", problems)
        if commit is None:
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
        seal = _marker(rundir, path, ShardSeal, "seal", problems)
        if seal is None:
            continue
        sealed.add(seal.shard)
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
    return _Stage(problems, known, commits, sealed)


def verify(rundir: RunDir) -> list[Problem]:
    """Every problem found in the run directory; empty means the run is consistent."""
    sizes = list_files(rundir.loc, rundir.loc.root)
    problems: list[Problem] = _check_bookkeeping(rundir, sizes)
    known = {rundir.abs(name) for name in _TOP_LEVEL_FILES}
    stages = {stage: _check_stage(rundir, stage, stamp, sizes) for stage, stamp in _stamps(rundir, problems, known).items()}
    for checked in stages.values():
        problems += checked.problems
        known |= checked.known
    problems += _check_manifest(rundir, sizes, stages)
    exports = {rel.split("/")[1] for rel in map(rundir.loc.rel, sizes) if rel.startswith(f"{DATASETS}/") and rel.count("/") > 1}
    unfinished: set[str] = set()
    for name in sorted(exports):
        marker_path = rundir.abs(f"{DATASETS}/{name}/{EXPORTED}")
        if marker_path not in sizes:
            unfinished.add(name)  # the marker is written last: an export cut short
            continue
        known.add(marker_path)
        marker = _marker(rundir, marker_path, ExportMarker, "export marker", problems)
        if marker is None:
            continue
        known.add(rundir.abs(f"{DATASETS}/{marker.name}/README.md"))  # unlisted by markers before README was
        for entry in marker.files:
            known.add(rundir.abs(entry.path))
            problems += _check_file(rundir, entry, sizes)
    for path in sorted(set(sizes) - known):
        rel = rundir.loc.rel(path)
        if is_temp(path) or _is_ours(rel):
            what = "uncommitted leftover (resume removes it)"
        elif rel.startswith(f"{DATASETS}/") and rel.count("/") > 1 and rel.split("/")[1] in unfinished:
            what = "uncommitted leftover of an unfinished export (resume writes the export again)"
        else:
            what = "foreign file: no marker accounts for it"
        problems.append(Problem(rel, what))
    return problems


def _stamps(rundir: RunDir, problems: list[Problem], known: set[str]) -> dict[str, StageStamp | None]:
    """The stamp of every top-level directory that has one (None where it is unreadable: a
    problem, but the stage's markers still account for its files)."""
    selector = pafs.FileSelector(rundir.loc.root, allow_not_found=True)
    stamps: dict[str, StageStamp | None] = {}
    for info in rundir.loc.fs.get_file_info(selector):
        path = f"{info.path}/{STAGE_STAMP}"
        if info.type != pafs.FileType.Directory or rundir.loc.fs.get_file_info(path).type != pafs.FileType.File:
            continue
        stamps[info.base_name] = _marker(rundir, path, StageStamp, "stage stamp", problems)
    return dict(sorted(stamps.items()))


def _check_bookkeeping(rundir: RunDir, sizes: dict[str, int]) -> list[Problem]:
    """run.json and the plan: not checksummed by any marker, but each must be readable
    (resume needs run.json)."""
    problems = []
    if rundir.abs(RUN_JSON) in sizes:
        _, why = _read(rundir, rundir.abs(RUN_JSON), RunInfo)
        if why:
            problems.append(Problem(RUN_JSON, f"unreadable: {why}"))
    if rundir.abs(PLAN_JSON) in sizes:
        try:
            json.loads(rundir.read_bytes_rel(PLAN_JSON))
        except ValueError as exc:
            problems.append(Problem(PLAN_JSON, f"unreadable: {exc}"))
    return problems


def _check_manifest(rundir: RunDir, sizes: dict[str, int], stages: dict[str, _Stage]) -> list[Problem]:
    """The manifest, if there is one: readable, a manifest's columns, and its rows as the
    markers verify read give them (it has no checksum of its own: it is derived, so it is
    compared with what it derives from; `speechmed manifest` rewrites it). Parts committed
    after it was written are not missing; a row that disagrees with its marker, has none,
    or is absent although older than the newest row, is a problem."""
    if rundir.abs(MANIFEST) not in sizes:
        return []
    try:
        table = pq.read_table(rundir.abs(MANIFEST), filesystem=rundir.loc.fs)
    except (OSError, ValueError) as exc:
        return [Problem(MANIFEST, f"unreadable (`speechmed manifest` writes it again): {exc}")]
    if not table.schema.equals(MANIFEST_SCHEMA, check_metadata=False):
        return [Problem(MANIFEST, "not a manifest's columns (`speechmed manifest` writes it again)")]
    rows = table.to_pylist()
    listed = dict.fromkeys(row["stage"] for row in rows)
    expected = {(r["stage"], r["shard"], r["part"]): r for stage in listed if stage in stages
                for r in manifest_rows(stage, stages[stage].commits, stages[stage].sealed)}
    newest = max((row["committed_at"] for row in rows), default=0.0)
    fix = "(`speechmed manifest` writes it again from the markers)"
    problems, seen = [], set()
    for row in rows:
        key = (row["stage"], row["shard"], row["part"])
        name = f"{key[0]} shard {key[1]} part {key[2]}"
        marker = expected.get(key)
        if key in seen:
            problems.append(Problem(MANIFEST, f"{name} is listed twice {fix}"))
        elif marker is None:
            problems.append(Problem(MANIFEST, f"{name} has no commit marker {fix}"))
        else:
            # A shard sealed after the manifest was written is fine; the reverse is not.
            differ = [k for k in row if k != "sealed" and row[k] != marker[k]]
            differ += ["sealed"] if row["sealed"] and not marker["sealed"] else []
            if differ:
                problems.append(Problem(MANIFEST, f"{name}: {', '.join(differ)} differ from its commit marker {fix}"))
        seen.add(key)
    missing = [k for k, marker in expected.items() if k not in seen and marker["committed_at"] <= newest]
    if missing:
        shown = ", ".join(f"{s} shard {sh} part {p}" for s, sh, p in missing[:5])
        problems.append(Problem(MANIFEST, f"{len(missing)} committed part(s) not listed although older than its newest "
                                f"row: {shown}{', ...' if len(missing) > 5 else ''} {fix}"))
    return problems


def _is_ours(rel: str) -> bool:
    return rel.endswith(".parquet") and "/shard-" in rel
