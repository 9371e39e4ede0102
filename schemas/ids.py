"""Deterministic identity and randomness: ids from source keys, shards by id hash, and
one random generator per (run seed, stage, record id).

Nothing here depends on a record's position, so re-running, resuming, or reading the
sources in another order gives the same ids, shards and random choices.
"""

from __future__ import annotations

import hashlib

import numpy as np


def _digest(*parts: str, size: int = 16) -> bytes:
    h = hashlib.blake2b(digest_size=size)
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x00")  # separator: ("ab", "c") and ("a", "bc") must differ
    return h.digest()


def record_id(source: str, source_key: str) -> str:
    """Stable record id: the source name plus a hash of its key in that source."""
    return f"{source}-{_digest(source, source_key, size=8).hex()}"


def content_key(text: str) -> str:
    """A source key for records that carry no key of their own: a hash of their content."""
    return "sha:" + _digest(text, size=12).hex()


def shard_of(record_id_: str, num_shards: int) -> int:
    """The shard a record belongs to, by hash of its id."""
    return int.from_bytes(_digest("shard", record_id_, size=8), "big") % num_shards


def seed_for(run_seed: int, stage: str, record_id_: str) -> int:
    """A 63-bit seed for one (run seed, stage, record): engines that take an int seed."""
    return int.from_bytes(_digest(str(run_seed), stage, record_id_, size=8), "big") >> 1


def rng_for(run_seed: int, stage: str, record_id_: str) -> np.random.Generator:
    """The random generator of one record in one stage."""
    return np.random.default_rng(seed_for(run_seed, stage, record_id_))
