"""The SpeechLM: speech encoder → speech projector → LLM core → speech generator.

The layout and parameter names are LLaMA-Omni2's (and SpeechMedAssist's, a near copy; see
../shared/ENGINES.md §3), so a freeze policy written against the part names below reads
the same as theirs:

    part              module                                   state-dict prefix
    speech_encoder    model.speech_encoder (Whisper encoder)   model.speech_encoder.
    speech_projector  model.speech_projector (concat k frames  model.speech_projector.
                      → Linear → ReLU → Linear)
    llm               Qwen2: model.embed_tokens/layers/norm,   model.embed_tokens. model.layers.
                      lm_head                                  model.norm. lm_head.
    speech_generator  speech_generator: a causal LM over       speech_generator.
                      units, input_proj and gate

The encoder is transformers' `WhisperEncoder` (LLaMA-Omni2 uses openai-whisper's; same
architecture, other parameter names). A user turn's audio is one `<speech>` token in the
prompt; its Whisper features (30 s window: 1500 frames, 300 embeddings at k=5) are spliced
in place of that token, with labels -100 there.

The speech generator reads the LLM's last hidden states as LLaMA-Omni2 streams them: the
response token y_t is represented by the hidden state that predicted it (position of y_t
minus one) through `input_proj`, gated with the generator's embedding of y_t itself. In
training (Stage II-b) the sequence is laid out as at inference with stream_params (R, W):
R text representations, then up to W units, ... ; after the last text chunk `<sep>`, the
remaining units and end-of-speech. Only units and end-of-speech are predicted.

Units are CosyVoice2 25 Hz tokens in [0, unit_vocab_size); unit u is the generator's token
`unit_offset + u`. The generator's ids below `unit_offset` are the LLM's text ids.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
    WhisperConfig,
)
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.whisper.modeling_whisper import WhisperEncoder, WhisperModel

SPEECH_TOKEN = "<speech>"
IGNORE_INDEX = -100
MODEL_TYPE = "speechmed_speechlm"

Part = Literal["speech_encoder", "speech_projector", "llm", "speech_generator"]
PARTS: tuple[Part, ...] = ("speech_encoder", "speech_projector", "llm", "speech_generator")
# The adapter's naming of the four parts, by state-dict prefix (LLaMA-Omni2's names).
PART_PREFIXES: dict[Part, tuple[str, ...]] = {
    "speech_encoder": ("model.speech_encoder.",),
    "speech_projector": ("model.speech_projector.",),
    "llm": ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head."),
    "speech_generator": ("speech_generator.",),
}


def part_of(name: str) -> Part:
    """The part a parameter belongs to; a parameter of no part is an error (the freeze
    policy must cover every weight)."""
    for part, prefixes in PART_PREFIXES.items():
        if name.startswith(prefixes):
            return part
    raise ValueError(f"parameter {name!r} belongs to none of the SpeechLM parts {PARTS}")


@strict
class SpeechLMConfig(Qwen2Config):
    """The LLM core's Qwen2 config plus the speech parts (plain dicts, saved in config.json)."""

    model_type = MODEL_TYPE

    speech_encoder: dict | None = None  # WhisperConfig fields of the encoder
    speech_encoder_ds_rate: int = 5  # projector: frames concatenated per embedding (50 Hz → 10 Hz)
    speech_projector_hidden: int = 2048
    speech_token_id: int | None = None
    speech_generator: dict | None = None  # Qwen2Config fields of the unit LM; None: no generator
    unit_vocab_size: int = 6561
    unit_offset: int | None = None
    unit_sep_id: int | None = None
    unit_eos_id: int | None = None
    stream_read: int = 3  # LLaMA-Omni2 stream_params "(3,10)": read 3 text tokens, write up to 10 units
    stream_write: int = 10


class SpeechProjector(nn.Module):
    """k consecutive encoder frames concatenated → Linear → ReLU → Linear (LLaMA-Omni2's
    EncoderProjectorConcat: `linear1`, `linear2`)."""

    def __init__(self, encoder_dim: int, llm_dim: int, k: int, hidden: int):
        super().__init__()
        self.k = k
        self.linear1 = nn.Linear(encoder_dim * k, hidden)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(hidden, llm_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        batch, length, dim = frames.shape
        length -= length % self.k  # trailing frames that do not fill a group are dropped
        grouped = frames[:, :length].reshape(batch, length // self.k, dim * self.k)
        return self.linear2(self.relu(self.linear1(grouped)))


def stream_layout(n_text: int, n_units: int, read: int, write: int) -> list[tuple[str, int, int]]:
    """The generator's training sequence as (kind, start, end) spans over the text
    representations ("text"), the units ("units") and the markers ("sep", "eos").

    It is the order LLaMA-Omni2 produces at inference: after every `read` text tokens up
    to `write` units; the last text chunk is followed by `<sep>`, then every remaining unit,
    then end-of-speech."""
    spans: list[tuple[str, int, int]] = []
    unit = 0
    for start in range(0, n_text, read):
        end = min(start + read, n_text)
        spans.append(("text", start, end))
        if end == n_text:
            break
        take = min(write, n_units - unit)
        if take:
            spans.append(("units", unit, unit + take))
            unit += take
    spans.append(("sep", 0, 1))
    if unit < n_units:
        spans.append(("units", unit, n_units))
    spans.append(("eos", 0, 1))
    return spans


class SpeechGenerator(nn.Module):
    """The unit LM (LLaMA-Omni2's LLMSpeechGenerator): `model` (Qwen2ForCausalLM),
    `input_proj` (LLM hidden → generator hidden), `gate` (fusion with the token's embedding)."""

    def __init__(self, config: SpeechLMConfig):
        super().__init__()
        self.model = Qwen2ForCausalLM(Qwen2Config(**config.speech_generator))
        size = self.model.config.hidden_size
        self.input_proj = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size * 2), nn.ReLU(),
                                        nn.Linear(config.hidden_size * 2, size))
        self.gate = nn.Sequential(nn.Linear(2 * size, size), nn.Sigmoid())
        self.unit_offset, self.sep_id, self.eos_id = config.unit_offset, config.unit_sep_id, config.unit_eos_id
        self.unit_vocab_size = config.unit_vocab_size
        self.read, self.write = config.stream_read, config.stream_write

    def fuse(self, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        rep = self.input_proj(hidden)
        emb = self.model.get_input_embeddings()(token_ids)
        gate = self.gate(torch.cat([rep, emb], dim=-1))
        return rep * gate + emb * (1 - gate)

    def sequence(self, hidden: torch.Tensor, token_ids: torch.Tensor, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(input embeddings, labels) of one response: see `stream_layout`."""
        if units.numel() and (int(units.min()) < 0 or int(units.max()) >= self.unit_vocab_size):
            raise ValueError(f"units must lie in [0, {self.unit_vocab_size}); got {int(units.min())}..{int(units.max())}")
        embed = self.model.get_input_embeddings()
        text = self.fuse(hidden, token_ids)
        unit_ids = units + self.unit_offset
        units_emb = embed(unit_ids)
        marker = {"sep": self.sep_id, "eos": self.eos_id}
        pieces, labels = [], []
        for kind, start, end in stream_layout(len(token_ids), len(units), self.read, self.write):
            if kind == "text":
                pieces.append(text[start:end])
                labels.append(torch.full((end - start,), IGNORE_INDEX, device=units.device))
            elif kind == "units":
                pieces.append(units_emb[start:end])
                labels.append(unit_ids[start:end])
            else:
                token = torch.tensor([marker[kind]], device=units.device)
                pieces.append(embed(token))
                # `<sep>` is given (the text ended); end-of-speech is predicted after the last unit.
                labels.append(token if kind == "eos" else torch.full((1,), IGNORE_INDEX, device=units.device))
        return torch.cat(pieces), torch.cat(labels)

    def loss(self, segments: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Mean next-unit cross-entropy over (hidden, token ids, units) response segments."""
        built = [self.sequence(*segment) for segment in segments]
        length = max(len(labels) for _, labels in built)
        size = built[0][0].shape[-1]
        embeds = built[0][0].new_zeros(len(built), length, size)
        labels = torch.full((len(built), length), IGNORE_INDEX, dtype=torch.long, device=embeds.device)
        mask = torch.zeros(len(built), length, dtype=torch.long, device=embeds.device)
        for i, (e, l) in enumerate(built):
            embeds[i, : len(l)], labels[i, : len(l)], mask[i, : len(l)] = e, l, 1
        return self.model(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss


def _label_runs(labels: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of each run of learnt (non -100) positions: one per assistant turn."""
    learnt = (labels != IGNORE_INDEX).tolist()
    runs, start = [], None
    for i, flag in enumerate([*learnt, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i))
            start = None
    return runs


def _trains(modules: list[nn.Module]) -> bool:
    return any(p.requires_grad for m in modules for p in m.parameters())


class SpeechLMForCausalLM(Qwen2ForCausalLM):
    """Qwen2 with a Whisper encoder and projector on `model`, and a speech generator."""

    config_class = SpeechLMConfig
    # Losses are means over each micro-batch: the Trainer must not pass token counts
    # (they would count LLM labels for the generator's unit loss too).
    accepts_loss_kwargs = False

    def __init__(self, config: SpeechLMConfig):
        super().__init__(config)
        if config.speech_encoder is None or config.speech_token_id is None:
            raise ValueError("a SpeechLM config needs speech_encoder and speech_token_id (see assemble_speechlm)")
        encoder_config = WhisperConfig(**config.speech_encoder)
        self.model.speech_encoder = WhisperEncoder(encoder_config)
        self.model.speech_projector = SpeechProjector(encoder_config.d_model, config.hidden_size,
                                                      config.speech_encoder_ds_rate, config.speech_projector_hidden)
        self.speech_generator = SpeechGenerator(config) if config.speech_generator else None
        self.post_init()

    def parts(self) -> Iterator[tuple[str, Part, nn.Parameter]]:
        """(name, part, parameter) for every parameter (tied weights once)."""
        for name, param in self.named_parameters():
            yield name, part_of(name), param

    def encode_speech(self, features: torch.Tensor) -> torch.Tensor:
        """(n, mel bins, frames) log-mel → (n, frames/2/k, hidden) LLM embeddings."""
        encoder, projector = self.model.speech_encoder, self.model.speech_projector
        # A frozen encoder runs without autograd: nothing before it learns.
        with torch.set_grad_enabled(torch.is_grad_enabled() and _trains([encoder])):
            frames = encoder(features.to(encoder.conv1.weight.dtype)).last_hidden_state
        return projector(frames)

    def splice(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None,
               speech: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(embeddings, attention mask, labels, token ids) with each `<speech>` token replaced
        by its utterance's embeddings (labels -100 and token id pad there), padded right."""
        speech_id, pad_id = self.config.speech_token_id, self.config.pad_token_id or 0
        if labels is None:
            labels = torch.full_like(input_ids, IGNORE_INDEX)
        placeholders = input_ids == speech_id
        count = int((placeholders & attention_mask.bool()).sum())
        given = 0 if speech is None else len(speech)
        if count != given:
            raise ValueError(f"the batch has {count} {SPEECH_TOKEN} placeholder(s) but {given} utterance(s)")
        embed = self.model.embed_tokens
        if not count:
            return embed(input_ids), attention_mask, labels, input_ids
        utterances = self.encode_speech(speech)
        text = embed(input_ids.masked_fill(placeholders, pad_id))
        rows, k = [], 0
        for b in range(len(input_ids)):
            keep = attention_mask[b].bool()
            ids, emb, lab = input_ids[b][keep], text[b][keep], labels[b][keep]
            pieces_e, pieces_l, pieces_i, start = [], [], [], 0
            for pos in (ids == speech_id).nonzero().flatten().tolist():
                u = utterances[k]
                k += 1
                pieces_e += [emb[start:pos], u]
                pieces_l += [lab[start:pos], lab.new_full((len(u),), IGNORE_INDEX)]
                pieces_i += [ids[start:pos], ids.new_full((len(u),), pad_id)]
                start = pos + 1
            pieces_e.append(emb[start:])
            pieces_l.append(lab[start:])
            pieces_i.append(ids[start:])
            rows.append((torch.cat(pieces_e), torch.cat(pieces_l), torch.cat(pieces_i)))
        length = max(len(r[1]) for r in rows)
        embeds = text.new_zeros(len(rows), length, text.shape[-1])
        out_labels = labels.new_full((len(rows), length), IGNORE_INDEX)
        out_ids = input_ids.new_full((len(rows), length), pad_id)
        mask = attention_mask.new_zeros(len(rows), length)
        for b, (e, l, i) in enumerate(rows):
            embeds[b, : len(l)], out_labels[b, : len(l)], out_ids[b, : len(l)], mask[b, : len(l)] = e, l, i, 1
        return embeds, mask, out_labels, out_ids

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        speech: torch.Tensor | None = None,
        unit_targets: torch.Tensor | None = None,
        **kwargs: object,
    ) -> CausalLMOutputWithPast:
        """Text loss over assistant content; with `unit_targets` (Stage II-b) the speech
        generator's unit loss instead.

        unit_targets: (assistant turns in the batch, max units), turns in batch order,
        padded with -1; a row of -1 is a turn with no units (it is skipped)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        learn = labels is not None
        embeds, mask, labels, ids = self.splice(input_ids, attention_mask, labels, speech)
        core = [self.model.speech_encoder, self.model.speech_projector, self.model.embed_tokens,
                self.model.layers, self.model.norm]
        with torch.set_grad_enabled(torch.is_grad_enabled() and (unit_targets is None or _trains(core))):
            hidden = self.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
        if unit_targets is not None:
            return CausalLMOutputWithPast(loss=self._unit_loss(hidden, labels, ids, unit_targets))
        logits = self.lm_head(hidden)
        loss = self.loss_function(logits, labels, self.config.vocab_size) if learn else None
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def _unit_loss(self, hidden: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor,
                   unit_targets: torch.Tensor) -> torch.Tensor:
        if self.speech_generator is None:
            raise ValueError("this SpeechLM has no speech generator (config.speech_generator is None)")
        runs = [(b, start, end) for b in range(len(labels)) for start, end in _label_runs(labels[b])]
        if len(runs) != len(unit_targets):
            raise ValueError(f"{len(unit_targets)} unit rows for {len(runs)} assistant turns in the batch")
        segments = []
        for (b, start, end), row in zip(runs, unit_targets):
            units = row[row >= 0]
            if len(units):
                # y_t is represented by the hidden state that predicted it (position - 1).
                segments.append((hidden[b, start - 1 : end - 1], ids[b, start:end], units))
        if not segments:
            raise ValueError("no assistant turn in the batch has units")
        return self.speech_generator.loss(segments)


AutoConfig.register(MODEL_TYPE, SpeechLMConfig)
AutoModelForCausalLM.register(SpeechLMConfig, SpeechLMForCausalLM)


def speechlm_config(path: str | Path) -> SpeechLMConfig:
    """The config of a SpeechLM folder; a clear error for anything else."""
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json; --model takes a SpeechLM folder (make one with "
                                "training.model.assemble_speechlm from a Qwen2 chat model and a Whisper model)")
    config = AutoConfig.from_pretrained(path)
    if config.model_type != MODEL_TYPE:
        raise ValueError(f"{path} is a {config.model_type!r} model, not a speechmed SpeechLM ({MODEL_TYPE!r}); "
                         "assemble one with training.model.assemble_speechlm")
    return config


def load_speechlm(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[SpeechLMForCausalLM, PreTrainedTokenizerBase]:
    """A SpeechLM checkpoint (as `assemble_speechlm` or a training run writes it) and its tokenizer."""
    speechlm_config(path)
    model = SpeechLMForCausalLM.from_pretrained(path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def assemble_speechlm(
    llm: str | Path,
    out: str | Path,
    *,
    speech_encoder: str | Path | WhisperConfig,
    speech_generator: str | Path | Qwen2Config | None = None,
    unit_vocab_size: int = 6561,
    ds_rate: int = 5,
    projector_hidden: int = 2048,
    stream: tuple[int, int] = (3, 10),
    seed: int = 0,
) -> Path:
    """A SpeechLM folder from a Qwen2 chat checkpoint (the LLM core and tokenizer, plus a
    `<speech>` token), a Whisper checkpoint or config (the encoder), a new projector, and
    optionally a speech generator (a Qwen2 checkpoint or config, its vocabulary extended by
    the units and `<sep>`), the way SpeechMedAssist starts its stages."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(llm)
    tokenizer.add_special_tokens({"additional_special_tokens": [SPEECH_TOKEN]})
    core = Qwen2ForCausalLM.from_pretrained(llm, dtype=torch.float32)
    text_vocab = max(core.config.vocab_size, len(tokenizer))
    core.resize_token_embeddings(text_vocab)
    if isinstance(speech_encoder, WhisperConfig):
        encoder = WhisperEncoder(speech_encoder)
    else:
        encoder = WhisperModel.from_pretrained(speech_encoder, dtype=torch.float32).get_encoder()
    generator = None
    if speech_generator is not None:
        generator = (Qwen2ForCausalLM(speech_generator) if isinstance(speech_generator, Qwen2Config)
                     else Qwen2ForCausalLM.from_pretrained(speech_generator, dtype=torch.float32))
        if generator.config.vocab_size > text_vocab:
            raise ValueError(f"the generator's vocabulary ({generator.config.vocab_size}) is larger than the LLM's "
                             f"({text_vocab}): its text ids must be the LLM's")
        generator.resize_token_embeddings(text_vocab + unit_vocab_size + 1)
        if generator.config.tie_word_embeddings:
            # Untied here: a tie inside a nested model is not restored on load.
            generator.lm_head.weight = nn.Parameter(generator.get_input_embeddings().weight.detach().clone())
            generator.config.tie_word_embeddings = False
    config = SpeechLMConfig(
        **_fields(core.config),
        speech_encoder=_fields(encoder.config),
        speech_encoder_ds_rate=ds_rate,
        speech_projector_hidden=projector_hidden,
        speech_token_id=tokenizer.convert_tokens_to_ids(SPEECH_TOKEN),
        speech_generator=_fields(generator.config) if generator is not None else None,
        unit_vocab_size=unit_vocab_size,
        unit_offset=text_vocab if generator is not None else None,
        unit_sep_id=text_vocab + unit_vocab_size if generator is not None else None,
        unit_eos_id=tokenizer.eos_token_id if generator is not None else None,
        stream_read=stream[0],
        stream_write=stream[1],
    )
    config.architectures = [SpeechLMForCausalLM.__name__]
    model = SpeechLMForCausalLM(config)
    model.model.load_state_dict(core.model.state_dict(), strict=False)
    model.lm_head.load_state_dict(core.lm_head.state_dict())
    model.model.speech_encoder.load_state_dict(encoder.state_dict())
    if generator is not None:
        model.speech_generator.model.load_state_dict(generator.state_dict())
    model.tie_weights()
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _fields(config: object) -> dict:
    """A config's own fields, to build another config from (not its class or version)."""
    fields = config.to_dict()  # type: ignore[attr-defined]
    for key in ("architectures", "model_type", "transformers_version", "dtype", "torch_dtype"):
        fields.pop(key, None)
    return fields


def tiny_whisper_config() -> WhisperConfig:
    """A tiny Whisper encoder of the real input shape (128 mel bins, 30 s = 3000 frames)."""
    return WhisperConfig(num_mel_bins=128, d_model=32, encoder_layers=1, encoder_attention_heads=2,
                         encoder_ffn_dim=64, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64,
                         max_source_positions=1500)  # the encoder builds no token embeddings: vocab costs nothing


def tiny_generator_config() -> Qwen2Config:
    """A 2-layer unit LM; `assemble_speechlm` extends its vocabulary by the units."""
    return Qwen2Config(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                       tie_word_embeddings=True)


def make_tiny_speechlm(out: str | Path, *, seed: int = 0) -> Path:
    """A tiny randomly initialised SpeechLM of the real shape, for tests and trials:
    the tiny Qwen2 (pipeline.tinymodel) as LLM core, a 1-layer Whisper encoder, a 2-layer
    unit LM over 6561 CosyVoice2 units. Its outputs are meaningless."""
    from pipeline.tinymodel import make_tiny_model

    out = Path(out)
    llm = make_tiny_model(out / "_llm", seed=seed)
    assemble_speechlm(llm, out, speech_encoder=tiny_whisper_config(), speech_generator=tiny_generator_config(),
                      projector_hidden=64, seed=seed)
    shutil.rmtree(llm)
    return out
