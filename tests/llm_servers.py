"""Servers for the LLM tests, all on 127.0.0.1: the real vLLM OpenAI-compatible server on
the tiny model, a fault-injecting proxy in front of it, and an endpoint that answers garbage."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str  # the /v1 base URL
    process: subprocess.Popen

    def kill(self) -> None:
        """SIGKILL the server and its engine processes (its own process group), as a
        crashed host would; killing the server process alone orphans its engine."""
        os.killpg(self.process.pid, signal.SIGKILL)


@contextmanager
def vllm_server(model: Path, log: Path) -> Iterator[Server]:
    """`python -m vllm.entrypoints.openai.api_server` on the model, on 127.0.0.1."""
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
           "--max-model-len", "4096", "--structured-outputs-config", '{"backend": "guidance", "disable_any_whitespace": true}',
           # Seeded requests crash vLLM's CPU runner after a chunked prefill (see vllm_engine.py).
           "--no-enable-chunked-prefill", "--max-num-batched-tokens", "4096"]
    with log.open("wb") as out:
        server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy(), start_new_session=True)
        base = f"http://127.0.0.1:{port}/v1"
        try:
            deadline = time.monotonic() + 180
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"vLLM server exited: {log.read_text()[-3000:]}")
                try:
                    if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"vLLM server not ready: {log.read_text()[-3000:]}")
                time.sleep(0.5)
            yield Server(base, server)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)  # whatever of the group is left


class _QuietHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def reply(self, status: int, body: bytes, content_type: str = "application/json", **headers: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)


class LoopbackServer:
    """An HTTP server on 127.0.0.1 and a free port, serving `handler` on a daemon thread."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FaultProxy(LoopbackServer):
    """Forwards /v1 requests to `upstream`, except while told to fail: answer 429 to the
    next `throttle` requests, or drop connections while `down` (a dead server)."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.throttle = 0
        self.down = False
        self.served_429 = 0
        self.dropped = 0
        self.forwarded = 0
        self.in_flight = 0
        self.max_in_flight = 0  # most requests forwarded at the same time
        self.auth_headers: list[str | None] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(_QuietHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                proxy.auth_headers.append(self.headers.get("authorization"))
                with proxy.lock:
                    if proxy.down:
                        proxy.dropped += 1
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    if proxy.throttle > 0:
                        proxy.throttle -= 1
                        proxy.served_429 += 1
                        self.reply(429, b"", retry_after="1")
                        return
                path = self.path.removeprefix("/v1")
                with proxy.lock:
                    proxy.in_flight += 1
                    proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                try:
                    reply = httpx.post(f"{proxy.upstream}{path}", content=body, timeout=120,
                                       headers={"content-type": "application/json"})
                except httpx.HTTPError as exc:
                    proxy.errors.append(repr(exc))
                    raise
                finally:
                    with proxy.lock:
                        proxy.in_flight -= 1
                with proxy.lock:
                    proxy.forwarded += 1
                self.reply(reply.status_code, reply.content)

        super().__init__(Handler)


class GarbageServer(LoopbackServer):
    """An OpenAI-compatible chat endpoint that answers garbage: a broken or misbehaving model
    server, a test double at the model boundary (the real OpenAI engine, LLM stage loop and
    scheduler run against it). Each request gets one of `REPLIES`, chosen by a hash of the
    request's seed and `salt` (`keep` weighs the one valid "keep" answer against the other
    kinds), so a request asked again gets the same answer, as a seeded model would, and a
    run's outcome is reproducible."""

    def __init__(self, salt: int = 0, keep: int = 4):
        self.salt = salt
        self.served: dict[str, int] = {}
        self.lock = threading.Lock()
        choices = [("keep", keep, _chat('{"keep": true, "reason": "可以"}')),
                   ("judged_out", 1, _chat('{"keep": false, "reason": "需要看片子"}')),
                   ("not_json", 1, _chat("I think this dialogue is fine!!")),
                   ("wrong_shape", 1, _chat('{"verdict": "yes", "keep": "maybe"}')),
                   ("truncated", 1, _chat('{"keep": tr', finish_reason="length")),
                   ("empty", 1, _chat(None)),
                   ("control_bytes", 1, _chat("\u0000\u0007\ufffd{")),
                   ("not_a_completion", 1, json.dumps({"object": "error", "detail": "oops"}).encode()),
                   ("not_json_body", 1, b"<html><body>upstream crashed</body></html>")]
        self.table = [(name, body) for name, weight, body in choices for _ in range(weight)]
        server = self

        class Handler(_QuietHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                request = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                digest = hashlib.blake2b(f"{server.salt}:{request.get('seed')}".encode(), digest_size=8).digest()
                name, body = server.table[int.from_bytes(digest, "big") % len(server.table)]
                with server.lock:
                    server.served[name] = server.served.get(name, 0) + 1
                self.reply(200, body, "text/html" if name == "not_json_body" else "application/json")

        super().__init__(Handler)


def _chat(content: str | None, finish_reason: str = "stop") -> bytes:
    return json.dumps({"id": "garbage", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}]}).encode()
