"""Connecting the driver to Ray: an existing cluster, or a local one kept on loopback."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

import ray

# What a private local Ray (and the tests' cluster) needs: loopback only, and no token auth
# (a stray ~/.ray/auth_token would otherwise turn it on; ../shared/ENVIRONMENT.md). Against a
# real cluster the user's own RAY_AUTH_MODE applies.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Use the running Ray (if this process already joined one), the cluster at `address`
    or $RAY_ADDRESS, or else start a private local Ray for the duration."""
    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()
        return
    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)
    temp_dir = tempfile.mkdtemp(prefix="speechmed-ray-")
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=temp_dir,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
