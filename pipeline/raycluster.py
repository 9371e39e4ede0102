"""Connecting the driver to Ray: an existing cluster, or a local one kept on loopback."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator

import psutil
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_head(temp_dir: str, port: int) -> None:
    """Stop the processes of one head (and their children, the workers) only: `ray stop`
    would stop every Ray on the machine."""
    roots = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if temp_dir in cmdline or f"--address=127.0.0.1:{port}" in cmdline:
            roots.append(proc)
    procs = {p.pid: p for root in roots for p in [root, *_children(root)]}
    for proc in procs.values():
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(list(procs.values()), timeout=5)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


@contextlib.contextmanager
def local_head(num_cpus: int | None = None, *, num_gpus: int | None = None, dashboard: bool = False,
               dashboard_port: int | None = None) -> Iterator[str]:
    """A real `ray start --head` on 127.0.0.1 with a private temp dir, for tests and
    benchmarks; yields its address and stops exactly that cluster afterwards.

    `dashboard` starts the dashboard (job submission needs it) on 127.0.0.1, at
    `dashboard_port` if given: Ray's default port would clash with any other head on the
    machine. `num_gpus` declares logical GPUs (tests of GPU accounting on a CPU machine:
    Ray schedules on them, nothing uses a device)."""
    env = {**os.environ, **LOOPBACK_ENV}
    temp_dir = tempfile.mkdtemp(prefix="smray-")  # short: Ray's socket paths have a length limit
    port = _free_port()
    cmd = ["ray", "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
           f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    cmd += ["--dashboard-host=127.0.0.1"] if dashboard else ["--include-dashboard=false"]
    if dashboard:
        # The node's dashboard agent (it runs submitted jobs) would otherwise take the fixed
        # port 52365, and a second head on the machine would run no jobs.
        cmd.append(f"--dashboard-agent-listen-port={_free_port()}")
        if dashboard_port is not None:
            cmd.append(f"--dashboard-port={dashboard_port}")
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus}")
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        _stop_head(temp_dir, port)
        shutil.rmtree(temp_dir, ignore_errors=True)
