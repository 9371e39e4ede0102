"""The OpenAI-compatible engine against a real vLLM server on 127.0.0.1 (tiny model):
structured answers, backoff on 429, the API key from the environment only, and an
endpoint that goes away mid-run: the run stops with nothing rejected, resume finishes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from actors.engines import EngineUnavailable
from actors.engines.llm import EngineConfig, LLMRequest, Sampling, build_engine
from pipeline.config import parse_config
from pipeline.driver import execute
from pipeline.scheduler import PipelineError
from pipeline.status import run_status
from schemas.llm import FilterAnswer
from storage.rundir import RunDir
from storage.verify import verify
from tests.conftest import REPO, committed_ids
from tests.llm_servers import FaultProxy


def _engine(url: str, **kwargs: object):
    return build_engine(EngineConfig(kind="openai", model="tiny", base_url=url, **kwargs))


def _requests(n: int) -> list[LLMRequest]:
    return [LLMRequest(messages=[{"role": "user", "content": f"医生，我头疼了{i}天"}], seed=i,
                       sampling=Sampling(max_tokens=256), json_schema=FilterAnswer.model_json_schema()) for i in range(n)]


def test_structured_answers_and_key_from_environment(proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEECHMED_TEST_KEY", "sk-test-123")
    answers = _engine(proxy.url, api_key_env="SPEECHMED_TEST_KEY").generate(_requests(6))
    assert len(answers) == 6
    for answer in answers:
        FilterAnswer.model_validate_json(answer.text)  # schema-valid even from random weights
    assert set(proxy.auth_headers) == {"Bearer sk-test-123"}


def test_429_is_backed_off_not_fatal(proxy: FaultProxy) -> None:
    proxy.throttle = 5
    answers = _engine(proxy.url, max_concurrency=2, max_retries=8).generate(_requests(4))
    assert proxy.served_429 == 5 and proxy.forwarded == 4
    assert all(FilterAnswer.model_validate_json(a.text) for a in answers)


def test_concurrency_bound_is_shared_by_concurrent_callers(proxy: FaultProxy) -> None:
    """The actor runs several micro-batches at once: together they stay within
    max_concurrency, and each gets its own answers back in order."""
    from concurrent.futures import ThreadPoolExecutor

    engine = _engine(proxy.url, max_concurrency=3)
    batches = [_requests(12)[i::3] for i in range(3)]
    alone = [engine.generate(b) for b in batches]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(engine.generate, batches))
    engine.close()
    assert together == alone  # seeded: the same answers, each caller its own, in order
    assert 2 <= proxy.max_in_flight <= 3 and proxy.forwarded == 24


def test_retries_run_out_as_engine_unavailable(proxy: FaultProxy) -> None:
    proxy.down = True
    with pytest.raises(EngineUnavailable, match="no answer after 2 retries"):
        _engine(proxy.url, max_retries=2).generate(_requests(1))
    assert proxy.dropped == 3


@pytest.mark.usefixtures("ray_connected")
def test_endpoint_down_mid_run_then_resume_is_exactly_once(proxy: FaultProxy, tmp_path: Path) -> None:
    cfg = {
        "seed": 5, "num_shards": 2, "ingest_part_size": 16,
        "sources": [{"name": "sample", "format": "sharegpt",
                     "path": str(REPO / "pipeline" / "demo" / "sample_consultations.json"), "limit": 24}],
        "stages": [{
            "name": "filter", "kind": "llm_filter", "micro_batch_size": 4,
            "params": {"engine": {"kind": "openai", "model": "tiny", "base_url": proxy.url, "api_key_env": None,
                                  "max_retries": 1, "max_concurrency": 4},
                       "sampling": {"max_tokens": 256}},
            "resources": {"actors": 1, "num_cpus": 0.25, "max_part_attempts": 2, "batch_timeout_s": 120},
        }],
    }
    config = parse_config(cfg, base_dir=None, origin="test")
    run = tmp_path / "run"
    proxy.down = True
    with pytest.raises(PipelineError, match="no answer after 1 retries"):
        execute(config, str(run), command="pytest")
    rundir = RunDir(str(run))
    assert rundir.read_rejected("filter") is None, "an unreachable endpoint must not reject rows"

    proxy.down = False
    execute(config, str(run), command="pytest")
    assert proxy.errors == []  # the server itself stayed up
    status = {s.name: s for s in run_status(rundir).stages}
    assert status["filter"].rows_in == status["ingest"].rows_out
    assert status["filter"].rows_in == status["filter"].rows_out + status["filter"].rows_rejected
    kept = committed_ids(run, "filter")
    rejected = rundir.read_rejected("filter")
    every = kept + (rejected.column("id").to_pylist() if rejected is not None else [])
    assert max(Counter(every).values()) == 1 and sorted(every) == sorted(committed_ids(run, "ingest"))
    assert verify(rundir) == []
    assert "sk-" not in (run / "run.json").read_text()
