"""Secrets: an API key comes from the environment only, and no file a run writes, no log
and no message ever holds it.

A real pipeline (`speechmed run`, in a subprocess, on its own `ray start --head`) runs an
LLM filter stage through the OpenAI-compatible engine against an endpoint that requires a
key; the keys are unique random markers set in the environment of the Ray head (where the
stage's actors read them) and of the driver. One run uses the right key and finishes; a
second names a variable holding a wrong key, is refused (401) and stops with a message
naming the variable. Then every file under both run directories, the drivers' captured
stdout/stderr, the outputs of `status`, `manifest` and `verify`, and every file of the Ray
head's session folder (its logs and the actors' logs) are searched for both markers: none
may hold them. The endpoint records what it was sent, so the test fails if the keys never
left the environment at all.

Test double: `KeyedEndpoint` is a small HTTP server standing in for a hosted
OpenAI-compatible API (the boundary of the system): it checks the `Authorization` header,
answers canned chat completions, answers the first request 503 (a retry), and answers a
wrong key 401 with the key echoed in its error body, as some hosted APIs do. The engine
against a real vLLM server is tested in test_llm_endpoint.py.
"""

from __future__ import annotations

import glob
import http.server
import json
import os
import secrets
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
import yaml

from actors.engines import EngineUnavailable
from actors.engines.llm import EngineConfig, LLMRequest, build_engine
from pipeline.config import ConfigError, parse_config
from pipeline.raycluster import LOOPBACK_ENV, local_head
from tests.conftest import SAMPLE

GOOD_VAR, BAD_VAR = "SPEECHMED_TEST_SECRET_KEY", "SPEECHMED_TEST_WRONG_KEY"


class KeyedEndpoint:
    """An OpenAI-compatible /v1/chat/completions that requires `Bearer <key>` (see module doc)."""

    def __init__(self, key: str):
        self.key = key
        self.received: list[str | None] = []
        self.lock = threading.Lock()
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                auth = self.headers.get("authorization")
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                except ValueError:
                    self._reply(400, {"error": {"message": "the body is not JSON"}})
                    return
                with endpoint.lock:
                    endpoint.received.append(auth)
                    first = len(endpoint.received) == 1
                sent = (auth or "").removeprefix("Bearer ")
                if auth != f"Bearer {endpoint.key}":
                    self._reply(401, {"error": {"message": f"Incorrect API key provided: {sent}",
                                                "type": "invalid_request_error"}})
                elif first:
                    self._reply(503, {"error": {"message": f"overloaded, try again (key {sent})"}})
                else:
                    keep = len(json.dumps(body["messages"], ensure_ascii=False)) % 2 == 0
                    answer = json.dumps({"keep": keep, "reason": "内容完整" if keep else "信息不足"}, ensure_ascii=False)
                    self._reply(200, {"id": "x", "object": "chat.completion", "model": body["model"],
                                      "choices": [{"index": 0, "finish_reason": "stop",
                                                   "message": {"role": "assistant", "content": answer}}]})

            def _reply(self, status: int, payload: dict) -> None:
                data = json.dumps(payload, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _config(path: Path, url: str, key_var: str) -> Path:
    path.write_text(yaml.safe_dump({
        "seed": 3, "num_shards": 2, "ingest_part_size": 8,
        "sources": [{"name": "sample", "format": "sharegpt", "path": str(SAMPLE), "limit": 12}],
        "stages": [{"name": "filter", "kind": "llm_filter", "micro_batch_size": 4,
                    "params": {"engine": {"kind": "openai", "model": "hosted", "base_url": url, "api_key_env": key_var,
                                          "max_retries": 2, "max_concurrency": 2},
                               "max_attempts": 1},
                    "resources": {"actors": 1, "num_cpus": 0.25, "max_part_attempts": 2, "batch_timeout_s": 60}}],
        "exports": [{"name": "Filtered", "stage": "filter"}],
    }, allow_unicode=True), encoding="utf-8")
    return path


def _speechmed(*args: str, env: dict[str, str], out: Path) -> subprocess.CompletedProcess:
    """Run the CLI; its stdout and stderr are also kept in `out`.{stdout,stderr}."""
    proc = subprocess.run(["speechmed", *args], env=env, capture_output=True, text=True, timeout=300)
    out.with_suffix(".stdout").write_text(proc.stdout)
    out.with_suffix(".stderr").write_text(proc.stderr)
    return proc


def _holding(folders: list[Path], markers: list[str]) -> tuple[list[str], list[str]]:
    """(files under `folders` whose bytes contain a marker, the files searched)."""
    needles = [m.encode() for m in markers]
    hits, searched = [], []
    for folder in folders:
        for dirpath, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(dirpath, name)
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError:  # a socket, or a file of a head that went away meanwhile
                    continue
                searched.append(path)
                hits += [path for needle in needles if needle in data]
    return hits, searched


def test_keys_come_from_the_environment_and_are_never_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good, wrong = f"sk-speechmed-{secrets.token_hex(16)}", f"sk-wrong-{secrets.token_hex(16)}"
    # Set before the head starts: its raylet, and so the stage's actors, inherit them.
    monkeypatch.setenv(GOOD_VAR, good)
    monkeypatch.setenv(BAD_VAR, wrong)
    endpoint = KeyedEndpoint(good)
    logs = tmp_path / "driver"
    logs.mkdir()
    heads_before = set(glob.glob(os.path.join(tempfile.gettempdir(), "smray-*")))
    try:
        with local_head(num_cpus=2) as address:
            heads = [Path(p) for p in set(glob.glob(os.path.join(tempfile.gettempdir(), "smray-*"))) - heads_before]
            env = {**os.environ, **LOOPBACK_ENV}
            ok_run, bad_run = tmp_path / "run-ok", tmp_path / "run-bad"
            ok = _speechmed("run", str(_config(tmp_path / "ok.yaml", endpoint.url, GOOD_VAR)), "--run", str(ok_run),
                            "--address", address, env=env, out=logs / "run-ok")
            assert ok.returncode == 0, ok.stderr[-3000:]
            bad = _speechmed("run", str(_config(tmp_path / "bad.yaml", endpoint.url, BAD_VAR)), "--run", str(bad_run),
                             "--address", address, env=env, out=logs / "run-bad")
            for run in (ok_run, bad_run):
                for args in (["status", str(run), "--json"], ["manifest", str(run), "--json"], ["verify", str(run)]):
                    _speechmed(*args, env=env, out=logs / f"{run.name}-{args[0]}")
            hits, searched = _holding([ok_run, bad_run, logs, *heads], [good, wrong])
    finally:
        endpoint.close()

    assert hits == []
    assert bad.returncode == 1, bad.stderr[-3000:]
    # The refusal names the variable to fix, with the server's words (the key masked).
    assert "HTTP 401" in bad.stderr and f"the key in ${BAD_VAR} was refused" in bad.stderr, bad.stderr[-3000:]
    assert "Incorrect API key provided: ***" in bad.stderr
    # The keys did leave the environment: the endpoint saw both, the right one most.
    assert endpoint.received.count(f"Bearer {good}") >= 2 and f"Bearer {wrong}" in endpoint.received
    ray_logs = [p for p in searched if any(p.startswith(f"{head}/") for head in heads) and "/logs/" in p]
    assert any("worker" in p for p in ray_logs) and any("raylet" in p for p in ray_logs), "Ray's logs were searched"
    kept = json.loads((logs / "run-ok-manifest.stdout").read_text())
    assert kept and (tmp_path / "run-ok" / "run.json").exists()
    assert (tmp_path / "run-ok" / "datasets" / "Filtered" / "_EXPORTED.json").exists()  # the export was searched too
    assert len(searched) > 50


def test_a_refused_key_stops_the_batch_instead_of_rejecting_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process, without Ray: a 401 is EngineUnavailable (the micro-batch is redone on
    resume), not a per-row error that would reject every row; a missing variable says so."""
    endpoint = KeyedEndpoint("sk-the-right-one")
    try:
        monkeypatch.setenv(BAD_VAR, "sk-not-it-" + secrets.token_hex(8))
        monkeypatch.delenv(GOOD_VAR, raising=False)
        request = LLMRequest(messages=[{"role": "user", "content": "头疼"}], seed=1)
        for var, expected in ((BAD_VAR, f"the key in ${BAD_VAR} was refused"),
                              (GOOD_VAR, f"no key was sent: ${GOOD_VAR} is not set on the node")):
            engine = build_engine(EngineConfig(kind="openai", model="m", base_url=endpoint.url, api_key_env=var))
            with pytest.raises(EngineUnavailable) as error:
                engine.generate([request])
            engine.close()
            assert expected in str(error.value) and "sk-not-it-" not in str(error.value)
    finally:
        endpoint.close()


LEAKY = [  # (engine fields, the key path named)
    ({"api_key": "sk-LEAK-abc123"}, "params.engine: api_key: an API key never goes in a config"),
    ({"api_key_env": "sk-LEAK-abc123"}, "params.engine.api_key_env: api_key_env must be the NAME"),
    ({"api_key_env": "abcdefLEAK0123456789"}, "params.engine.api_key_env: api_key_env must be the NAME"),
    ({"base_url": "http://user:LEAK-abc123@127.0.0.1:8000/v1"}, "params.engine.base_url: base_url must not carry"),
    ({"base_url": "http://127.0.0.1:8000/v1?api_key=LEAK-abc123"}, "params.engine.base_url: base_url must not carry"),
]


@pytest.mark.parametrize("fields, fragment", LEAKY,
                         ids=["api_key", "key_as_env", "lowercase_key", "url_user", "url_query"])
def test_a_config_carrying_a_key_is_refused_without_repeating_it(fields: dict, fragment: str) -> None:
    engine = {"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:8000/v1", **fields}
    raw = {"sources": [{"name": "s", "format": "sharegpt", "path": str(SAMPLE)}],
           "stages": [{"name": "filter", "kind": "llm_filter", "params": {"engine": engine}}]}
    with pytest.raises(ConfigError) as error:
        parse_config(raw, base_dir=None, origin="cfg.yaml")
    assert f"cfg.yaml: stages[0].{fragment}" in str(error.value) and "LEAK" not in str(error.value)
    with pytest.raises(Exception) as direct:  # built directly too, the value is not shown
        EngineConfig(**engine)
    assert "LEAK" not in str(direct.value)


def test_variable_names_are_accepted() -> None:
    for name in ("OPENAI_API_KEY", "DASHSCOPE_API_KEY", "_KEY2", None):
        assert EngineConfig(kind="openai", model="m", base_url="http://h/v1", api_key_env=name).api_key_env == name
