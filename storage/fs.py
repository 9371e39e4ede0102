"""Filesystem access through pyarrow.fs, for any URI a run directory may live at."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import pyarrow.fs as pafs


@dataclass(frozen=True)
class Location:
    """A filesystem plus a root path on it (no trailing slash)."""

    fs: pafs.FileSystem
    root: str
    uri: str

    @property
    def atomic_rename(self) -> bool:
        """Whether `move` replaces a file atomically (POSIX rename, HDFS).

        Object stores copy-then-delete, so there a commit marker written after the
        object is the commit point instead.
        """
        return self.fs.type_name in ("local", "hdfs")

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *[p.strip("/") for p in parts if p]])

    def rel(self, path: str) -> str:
        return path[len(self.root) + 1 :] if path.startswith(self.root + "/") else path


def resolve(uri: str) -> Location:
    """Resolve a local path or a URI (s3://, gs://, hdfs://, file://) to a Location."""
    if "://" not in uri:
        root = os.path.abspath(os.path.expanduser(uri))
        return Location(pafs.LocalFileSystem(), root.rstrip("/") or "/", root)
    fs, root = pafs.FileSystem.from_uri(uri)
    return Location(fs, root.rstrip("/"), uri)


def exists(loc: Location, path: str) -> bool:
    return loc.fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(loc: Location, path: str) -> bytes:
    with loc.fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(loc: Location, path: str, data: bytes) -> None:
    """Write a whole object so that readers see either nothing, the old or the new bytes.

    Local/HDFS: temp name in the same directory + rename. Object stores: a single PUT,
    which is already all-or-nothing.
    """
    parent = path.rsplit("/", 1)[0]
    loc.fs.create_dir(parent, recursive=True)
    if not loc.atomic_rename:
        with loc.fs.open_output_stream(path) as f:
            f.write(data)
        return
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{path.rsplit('/', 1)[1]}"
    try:
        with loc.fs.open_output_stream(tmp) as f:
            f.write(data)
        loc.fs.move(tmp, path)
    except BaseException:
        try:
            loc.fs.delete_file(tmp)
        except OSError:
            pass
        raise


def list_files(loc: Location, path: str) -> dict[str, int]:
    """All files under `path` (recursive) as {absolute path: size}; {} if absent."""
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    return {
        info.path: info.size or 0
        for info in loc.fs.get_file_info(selector)
        if info.type == pafs.FileType.File
    }


@dataclass(frozen=True)
class Walk:
    """The files found under a data folder: those inside it, and those a link leads out of it."""

    files: dict[str, int]  # absolute path -> size, sorted by path
    escaped: dict[str, str]  # absolute path -> where it leads (MISSING_TARGET for a dangling link)


MISSING_TARGET = "a missing target"


def walk_files(loc: Location, path: str) -> Walk:
    """Every file under the folder `path` (recursive), for readers of data folders.

    The rule for data the pipeline finds by walking a folder (source corpora, cough and
    noise clips, voice-pool clips): a file counts only if it really lies inside the folder.
    A symbolic link (to a file or a folder) whose target resolves outside it is not
    followed: it is listed in `escaped`, for the caller to report with the file named, so a
    corpus unpacked from an archive cannot pull in `~/.ssh/…` or `/etc/…` through a link,
    and a link back to a parent folder cannot make the walk endless (pyarrow's recursive
    listing follows such loops forever). Links that stay inside are followed once (a
    folder reached twice is not walked twice). A path the user names in a config is theirs
    to choose and is not checked. Object stores have no links: everything is inside.
    """
    if loc.fs.type_name != "local":
        return Walk(dict(sorted(list_files(loc, path).items())), {})
    root = os.path.realpath(path)
    files: dict[str, int] = {}
    escaped: dict[str, str] = {}
    seen: set[str] = set()

    def inside(real: str) -> bool:
        return _within(root, real)

    def visit(folder: str) -> None:
        real_folder = os.path.realpath(folder)
        if real_folder in seen:
            return
        seen.add(real_folder)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return  # unreadable folder: nothing found in it (the reader reports what is missing)
        for entry in entries:
            full = f"{folder.rstrip('/')}/{entry.name}"
            real = os.path.realpath(full)
            if entry.is_symlink() and not inside(real):
                escaped[full] = real if os.path.exists(real) else MISSING_TARGET
            elif entry.is_dir():
                visit(full)
            elif entry.is_file():
                files[full] = os.stat(full).st_size
            elif entry.is_symlink():
                escaped[full] = MISSING_TARGET  # a dangling link inside: nothing to read

    if os.path.isdir(path):
        visit(path)
    return Walk(dict(sorted(files.items())), escaped)


def _within(real_root: str, real: str) -> bool:
    return real == real_root or real.startswith(real_root.rstrip("/") + "/")


def leads_outside(root: str, path: str) -> str | None:
    """Where the file `path`, found under the folder `root` by a naming convention rather
    than a walk, really lies if that is outside `root` (through a link); None if inside.
    `walk_files`' rule for one file; never for object stores."""
    loc = resolve(root)
    if loc.fs.type_name != "local":
        return None
    real = os.path.realpath(resolve(path).root)
    return None if _within(os.path.realpath(loc.root), real) else real


def is_temp(path: str) -> bool:
    """Whether a path is an in-progress temporary object of `write_bytes`."""
    return path.rsplit("/", 1)[-1].startswith(".tmp-")
