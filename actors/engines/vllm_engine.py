"""vLLM inside the actor: one `LLM`, batches of chat requests, structured outputs.

The `guidance` backend with whitespace disabled keeps even a random model's JSON valid
(measured: xgrammar with whitespace allowed let raw control characters through).
"""

from __future__ import annotations

from actors.engines.llm import EngineConfig, LLMEngine, LLMRequest, LLMResponse


class VLLMEngine(LLMEngine):
    def __init__(self, config: EngineConfig):
        from vllm import LLM  # heavy: only in the actor that needs it
        from vllm.platforms import current_platform

        self.config = config
        extra = {}
        if current_platform.is_cpu():
            # vLLM's CPU runner crashes rewinding a seeded request's generator after a
            # partial (chunked) prefill ("CPU Generator does not use offset"); we seed every
            # request, so prefill whole prompts on CPU.
            extra = {"enable_chunked_prefill": False, "max_num_batched_tokens": max(config.max_model_len, 2048)}
        self.llm = LLM(
            model=config.model,
            tensor_parallel_size=config.tensor_parallel_size,
            max_model_len=config.max_model_len,
            enforce_eager=config.enforce_eager,
            gpu_memory_utilization=config.gpu_memory_utilization,
            structured_outputs_config={"backend": "guidance", "disable_any_whitespace": True},
            **extra,
        )

    def generate(self, requests: list[LLMRequest]) -> list[LLMResponse]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        params = []
        for r in requests:
            constraint = None
            if r.json_schema is not None:
                constraint = StructuredOutputsParams(json=r.json_schema)
            elif r.choice is not None:
                constraint = StructuredOutputsParams(choice=r.choice)
            params.append(SamplingParams(
                temperature=r.sampling.temperature, top_p=r.sampling.top_p, max_tokens=r.sampling.max_tokens,
                seed=r.seed, structured_outputs=constraint,
            ))
        outputs = self.llm.chat([r.messages for r in requests], params, use_tqdm=False)
        return [LLMResponse(text=o.outputs[0].text, finish_reason=o.outputs[0].finish_reason) for o in outputs]
