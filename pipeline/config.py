"""The run configuration: YAML in, validated pydantic out, errors that name the key.

A bad config is reported as one line per problem, `file: key.path: what is wrong`, and
nothing is written (the CLI exits with code 2 before touching the run directory).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from actors.engines.llm import SECRET_ERROR
from actors.registry import STAGE_KINDS, stage_class
from actors.sources import SOURCE_FORMATS, SourceRef, source_format
from schemas import Treatment
from storage.fs import exists, resolve


PARAMS_ERROR = "nested_params"


def _validate_nested(model: type[BaseModel], value: dict[str, Any]) -> None:
    """Validate a kind's own parameters (a stage's params, a source's options) so that each
    problem is reported under its own key path (`parse_config` expands them)."""
    try:
        model.model_validate(value)
    except ValidationError as exc:
        problems = [[list(e["loc"]), _what(e, model)] for e in exc.errors()]
        summary = "; ".join(f"{_key_path(tuple(loc))}: {what}" for loc, what in problems)
        raise PydanticCustomError(PARAMS_ERROR, "{summary}", {"summary": summary, "problems": problems}) from None


class ConfigError(ValueError):
    """A config problem, already phrased for the user (one line per problem)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _not_dots(value: str) -> str:
    """A name that becomes a folder or file name in the run directory (an export's folder,
    a source's record ids) must not be `.` or `..`: an export named `..` would write, and
    on a re-export delete, the run directory itself."""
    if set(value) == {"."}:
        raise ValueError(f"{value!r} is not a usable name (it would be a path to a parent folder); use letters, digits, "
                         "'_', '-' or '.'")
    return value


class SourceConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    format: str
    path: str
    treatment: Treatment | None = Field(None, description="default: the format's own")
    sample_ratio: float = Field(1.0, gt=0, le=1, description="share kept, chosen by a hash of (seed, id)")
    limit: int | None = Field(None, ge=1, description="at most this many, the lowest sampling hashes")
    options: dict[str, Any] = {}

    _name = field_validator("name")(_not_dots)

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in SOURCE_FORMATS:
            raise ValueError(f"unknown format {value!r}; known: {', '.join(sorted(SOURCE_FORMATS))}")
        return value

    @field_validator("path")
    @classmethod
    def _existing_path(cls, value: str, info: ValidationInfo) -> str:
        base = (info.context or {}).get("base_dir")
        if "://" not in value and base is not None and not os.path.isabs(value):
            value = str(Path(base, value).resolve())
        # `check_paths: False` in the context: reading back a run's recorded config (verify),
        # whose sources may since have moved; the paths are not read then.
        if (info.context or {}).get("check_paths", True) and not exists(resolve(value), resolve(value).root):
            raise ValueError(f"no such file or folder: {value}")
        return value

    @field_validator("options")
    @classmethod
    def _valid_options(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        fmt = info.data.get("format")
        if fmt is None:
            return value
        _validate_nested(SOURCE_FORMATS[fmt].Options, value)
        return value

    def ref(self) -> SourceRef:
        """The source as its adapter sees it."""
        fmt = source_format(self.format)
        return SourceRef(self.name, self.path, self.treatment or fmt.default_treatment,
                         fmt.Options.model_validate(self.options))


class Resources(_Strict):
    """How a stage runs on Ray. None of this changes a stage's output."""

    actors: int = Field(2, ge=1)
    num_cpus: float = Field(0.5, ge=0)
    num_gpus: float = Field(0, ge=0)
    max_shards_in_flight: int = Field(4, ge=1)
    parts_in_flight_per_actor: int = Field(2, ge=1, description="queued micro-batches per actor, so it never idles")
    batch_timeout_s: float = Field(600, gt=0, description="a micro-batch running longer restarts its actor")
    max_part_attempts: int = Field(3, ge=1, description="failures of one micro-batch before the run stops")


class StageConfig(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    kind: str
    params: dict[str, Any] = {}
    micro_batch_size: int = Field(32, ge=1)
    max_row_retries: int = Field(2, ge=0)
    resources: Resources = Resources()

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in STAGE_KINDS:
            raise ValueError(f"unknown stage kind {value!r}; known kinds: {', '.join(sorted(STAGE_KINDS))}")
        return value

    @field_validator("params")
    @classmethod
    def _valid_params(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # Each kind owns its parameter model; report its errors under `params.`.
        kind = info.data.get("kind")
        if kind is None:
            return value  # the kind itself is already reported
        _validate_nested(stage_class(kind).Params, value)
        return value

    @model_validator(mode="after")
    def _enough_gpus(self) -> "StageConfig":
        # Runs only once the params are valid (pydantic skips it after a field error).
        cls = stage_class(self.kind)
        needed = cls.gpus_per_actor(cls.Params.model_validate(self.params))
        if self.resources.num_gpus < needed:
            raise ValueError(f"resources.num_gpus: each {self.kind} actor needs num_gpus: {needed:g} for its engine "
                             f"(tensor_parallel_size), got {self.resources.num_gpus:g}")
        return self


class ExportConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    stage: str
    sharegpt: bool = Field(False, description="a spoken dataset (synthesize stage) also as ShareGPT JSON(L) with audio "
                           "files, joined with the dialogues the stage read")

    _name = field_validator("name")(_not_dots)


class PipelineConfig(_Strict):
    seed: int = 0
    num_shards: int = Field(8, ge=1, le=99999)
    ingest_part_size: int = Field(256, ge=1, description="rows per committed part of the ingest stage")
    sources: list[SourceConfig] = Field(min_length=1)
    stages: list[StageConfig] = []
    exports: list[ExportConfig] = []

    @model_validator(mode="after")
    def _consistent(self) -> "PipelineConfig":
        names = [s.name for s in self.stages]
        if "ingest" in names or len(set(names)) != len(names):
            raise ValueError("stage names must be unique and not 'ingest'")
        if len({s.name for s in self.sources}) != len(self.sources):
            raise ValueError("source names must be unique")
        for export in self.exports:
            if export.stage not in ["ingest", *names]:
                raise ValueError(f"export {export.name!r} reads unknown stage {export.stage!r}")
            if export.sharegpt and (export.stage == "ingest" or export.stage == names[0] or "dialogue_id" not in
                                    stage_class(self.stages[names.index(export.stage)].kind).output_model.model_fields):
                raise ValueError(f"export {export.name!r}: sharegpt needs a stage of spoken turns (synthesize) that "
                                 f"reads dialogues from an earlier stage; {export.stage!r} is not one")
        return self


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the last key of `loc`, following field annotations."""
    current: type[BaseModel] | None = model
    for part in loc[:-1]:
        if isinstance(part, int) or current is None:
            continue
        field = current.model_fields.get(part)
        annotation = field.annotation if field else None
        candidates = getattr(annotation, "__args__", ()) or (annotation,)
        current = next((a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return current


def _what(error: Any, model: type[BaseModel]) -> str:
    """What is wrong, without where."""
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        holder = _model_at(model, loc)
        allowed = f" (allowed: {', '.join(holder.model_fields)})" if holder else ""
        return f"unknown key{allowed}"
    if error["type"] == "missing":
        return "required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    # A value that may be a secret (an API key where a variable name belongs) is never echoed.
    plain = not isinstance(value, (dict, list)) and value is not None and error["type"] != SECRET_ERROR
    shown = f" (got {value!r})" if plain and str(value) not in message else ""
    return f"{message}{shown}"


def _describe(error: Any, model: type[BaseModel]) -> list[str]:
    """`key.path: what is wrong`, one line per problem (a stage's params may hold several)."""
    loc = tuple(error["loc"])
    if error["type"] == PARAMS_ERROR:
        return [f"{_key_path((*loc, *inner))}: {what}" for inner, what in error["ctx"]["problems"]]
    return [f"{_key_path(loc)}: {_what(error, model)}"]


def parse_config(raw: Any, *, base_dir: str | None, origin: str) -> PipelineConfig:
    """Validate a config mapping; raise ConfigError with one line per problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: the config must be a mapping of keys, got {type(raw).__name__}")
    try:
        return PipelineConfig.model_validate(raw, context={"base_dir": base_dir})
    except ValidationError as exc:
        lines = [f"{origin}: {line}" for e in exc.errors() for line in _describe(e, PipelineConfig)]
        raise ConfigError("\n".join(lines)) from None


def load_config(path: str) -> PipelineConfig:
    """Read and validate a YAML config file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
    return parse_config(raw, base_dir=str(Path(path).resolve().parent), origin=path)
