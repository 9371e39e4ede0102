"""The LLM engine interface and its configuration.

`LLMEngine.generate(requests) -> responses`, one response per request, in order. A request
carries chat messages, sampling parameters, a seed, and an optional output constraint (a
JSON schema or a list of choices) that the engine enforces while decoding. Implementations:
`vllm` (the engine inside the actor, `actors.engines.vllm_engine`) and `openai` (any
OpenAI-compatible endpoint, `actors.engines.openai_engine`).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

# The error type of a config value that is, or may be, a secret: reported without the
# value (pipeline.config shows other bad values; this one must never reach a terminal or log).
SECRET_ERROR = "secret_value"
# An environment variable's name as shells write them; a key (mixed case, dashes, dots) is not.
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")
_SECRET_KEYS = frozenset({"api_key", "key", "token", "secret", "password", "authorization", "headers", "openai_api_key"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Sampling(_Strict):
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    max_tokens: int = Field(512, ge=1)


class LLMRequest(_Strict):
    messages: list[dict[str, str]]
    seed: int
    sampling: Sampling = Sampling()
    json_schema: dict[str, Any] | None = None
    choice: list[str] | None = None


class LLMResponse(_Strict):
    text: str
    finish_reason: str | None = None


class EngineConfig(_Strict):
    """Which engine a stage uses and how it is loaded; part of the stage's fingerprint
    (except the fields that only change speed, see `output_fields`).

    Secrets: the API key of an `openai` engine is read, on the node where the stage's actor
    runs, from the environment variable `api_key_env` names. A config that carries a key
    (an `api_key`-like field, a key-shaped `api_key_env`, credentials in `base_url`) is
    refused without the value being repeated."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    kind: Literal["vllm", "openai"] = "vllm"
    model: str = Field(description="vllm: a checkpoint folder; openai: the served model name")
    tensor_parallel_size: int = Field(1, ge=1)
    max_model_len: int = Field(4096, ge=64)
    max_num_seqs: int = Field(256, ge=1, description="vllm: sequences decoded together")
    enforce_eager: bool = False
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    # openai (any OpenAI-compatible endpoint)
    base_url: str | None = Field(None, description="e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="the environment variable holding the key; the key itself never goes in a config")
    max_concurrency: int = Field(16, ge=1)
    request_timeout_s: float = Field(120, gt=0)
    max_retries: int = Field(8, ge=0)

    # The config is stored whole in run.json and shown by error messages: a key in it would
    # leak there. So a key is refused wherever it could be written (never echoed back).
    @model_validator(mode="before")
    @classmethod
    def _no_key_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            named = sorted(k for k in data if str(k).lower() in _SECRET_KEYS)
            if named:
                raise PydanticCustomError(SECRET_ERROR, "{keys}: an API key never goes in a config (it would be stored in "
                                          "run.json); put it in an environment variable and name the variable with "
                                          "api_key_env, e.g. api_key_env: OPENAI_API_KEY", {"keys": ", ".join(named)})
        return data

    @field_validator("api_key_env")
    @classmethod
    def _a_variable_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise PydanticCustomError(SECRET_ERROR, "api_key_env must be the NAME of an environment variable (upper "
                                      "case, digits, underscores, e.g. OPENAI_API_KEY), never the key itself; the value "
                                      "given is not one (not shown, in case it is a key)")
        return value

    @field_validator("base_url")
    @classmethod
    def _no_credentials_in_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.username or parts.password or parts.query:
                raise PydanticCustomError(SECRET_ERROR, "base_url must not carry credentials or a query string (it is "
                                          "stored in run.json; not shown here); put the key in an environment variable "
                                          "and name it with api_key_env")
        return value

    def output_fields(self) -> dict[str, Any]:
        """What changes answers (the model), not how fast they come."""
        return {"kind": self.kind, "model": self.model, "max_model_len": self.max_model_len}


class LLMEngine(ABC):
    @abstractmethod
    def generate(self, requests: list[LLMRequest]) -> list[LLMResponse]:
        """One response per request, in order; the engine batches them as it likes.
        May be called from several threads at once."""

    def close(self) -> None:
        """Release what the engine holds (processes, connections)."""


def build_engine(config: EngineConfig) -> LLMEngine:
    """Load the configured engine (imports the heavy package only here)."""
    if config.kind == "vllm":
        from actors.engines.vllm_engine import VLLMEngine

        return VLLMEngine(config)
    if config.kind == "openai":
        from actors.engines.openai_engine import OpenAIEngine

        return OpenAIEngine(config)
    raise ValueError(f"unknown engine kind {config.kind!r}")
