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


def is_temp(path: str) -> bool:
    """Whether a path is an in-progress temporary object of `write_bytes`."""
    return path.rsplit("/", 1)[-1].startswith(".tmp-")
