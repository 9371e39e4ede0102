"""vLLM inside the actor: one `AsyncLLM`, any number of concurrent callers, structured outputs.

The engine runs on its own event loop in a background thread. `generate` may be called
from several threads at once (the actor runs several micro-batches concurrently), and all
their requests join one continuous batch, so the engine does not idle while a micro-batch
drains or while its results are being committed.

The `guidance` backend with whitespace disabled keeps even a random model's JSON valid
(measured: xgrammar with whitespace allowed let raw control characters through).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
from pathlib import Path
from typing import Any

from actors.engines.background import BackgroundLoop
from actors.engines.llm import EngineConfig, LLMEngine, LLMRequest, LLMResponse


def engine_kwargs(config: EngineConfig) -> dict[str, Any]:
    """The vLLM engine arguments for a config (shared with the benchmarks' bare baseline)."""
    from vllm.platforms import current_platform

    extra: dict[str, Any] = {}
    if current_platform.is_cpu():
        # vLLM's CPU runner crashes rewinding a seeded request's generator after a
        # partial (chunked) prefill ("CPU Generator does not use offset"); we seed every
        # request, so prefill whole prompts on CPU.
        extra = {"enable_chunked_prefill": False, "max_num_batched_tokens": max(config.max_model_len, 2048)}
    return dict(
        model=config.model,
        tensor_parallel_size=config.tensor_parallel_size,
        max_model_len=config.max_model_len,
        max_num_seqs=config.max_num_seqs,
        enforce_eager=config.enforce_eager,
        gpu_memory_utilization=config.gpu_memory_utilization,
        structured_outputs_config={"backend": "guidance", "disable_any_whitespace": True},
        **extra,
    )


def sampling_params(request: LLMRequest) -> Any:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    constraint = None
    if request.json_schema is not None:
        constraint = StructuredOutputsParams(json=request.json_schema)
    elif request.choice is not None:
        constraint = StructuredOutputsParams(choice=request.choice)
    s = request.sampling
    # FINAL_ONLY: one output per request when it finishes, not one per decoding step
    # (streaming every token through asyncio costs the engine's CPU time).
    return SamplingParams(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=request.seed,
                          structured_outputs=constraint, output_kind=RequestOutputKind.FINAL_ONLY)


def check_checkpoint(model: str) -> None:
    """Fail fast on a model that is neither a local folder nor a Hub id (`owner/name`):
    otherwise the Hub lookup retries for a minute before it fails, and offline it always does."""
    if Path(model).is_dir() or re.fullmatch(r"[\w.-]+/[\w.-]+", model):
        return
    raise FileNotFoundError(f"engine.model {model!r}: no checkpoint folder at this path on {socket.gethostname()} "
                            "(and not a Hugging Face id owner/name); point it at a downloaded checkpoint")


class VLLMEngine(LLMEngine):
    def __init__(self, config: EngineConfig):
        check_checkpoint(config.model)
        self.config = config
        self._ids = itertools.count()
        self._loop = BackgroundLoop("vllm-engine-loop")
        self.engine = self._loop.run(self._start())
        self.tokenizer = self.engine.get_tokenizer()  # the engine's own, not a second load

    async def _start(self) -> Any:
        # Built on the engine's loop: its output handler lives there.
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_kwargs(self.config), disable_log_stats=True))

    def prompt(self, messages: list[dict[str, str]]) -> str:
        """The model's chat template applied to the messages, ready for generation."""
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, requests: list[LLMRequest]) -> list[LLMResponse]:
        return self._loop.run(self._generate(requests))

    async def _generate(self, requests: list[LLMRequest]) -> list[LLMResponse]:
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def _one(self, request: LLMRequest) -> LLMResponse:
        final = None
        async for output in self.engine.generate(self.prompt(request.messages), sampling_params(request),
                                                 request_id=f"speechmed-{next(self._ids)}"):
            final = output
        assert final is not None and final.finished
        completion = final.outputs[0]
        return LLMResponse(text=completion.text, finish_reason=completion.finish_reason)

    def close(self) -> None:
        self.engine.shutdown()
        self._loop.close()
