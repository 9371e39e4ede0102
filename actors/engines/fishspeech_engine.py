"""FishSpeech / OpenAudio S1-mini (fishaudio/fish-speech) for random-timbre voices, imported lazily.

Written against commit d3df505 (2026-01-08), the last S1-mini-era commit read: from
3578e4e (tag v2.0.0-beta) on, the repository is "Fish Audio S2" and defaults to other
checkpoints, so pin d3df505 in `repo_path` (or install the package from it). The
checkpoint folder (`model_dir`, `checkpoints/openaudio-s1-mini`) holds the DualAR LM
(config.json, model.pth, tokenizer.tiktoken, special_tokens.json) and the DAC codec
(codec.pth); a missing file is refused here, before fish-speech fails on it obscurely.
What is called (../shared/ENGINES.md §2.2, §2.3):

* `fish_speech.models.text2semantic.inference.init_model(model_dir, device, precision,
  compile)` -> (model, decode_one_token); `compile` wraps decode_one_token in
  `torch.compile`. Then `model.setup_caches(max_batch_size=1,
  max_seq_len=model.config.max_seq_len, dtype=<the model's>)` under `torch.device(device)`,
  as the repository's own command line and queue worker do (the KV cache has batch 1);
* `generate_long(model=, device=, decode_one_token=, text=, num_samples=1,
  max_new_tokens=0, top_p=0.8, repetition_penalty=1.1, temperature=0.8, prompt_text=,
  prompt_tokens=)` (the paper's sampling values) yields `GenerateResponse(action="sample",
  codes=(num_codebooks, T))` and then `action="next"`; the sample codes are concatenated on
  the time axis;
* `fish_speech.models.dac.inference.load_model(config_name="modded_dac_vq",
  checkpoint_path=<model_dir>/codec.pth, device)` -> the codec;
  `codec.decode(indices=codes[None], feature_lengths) -> (audio (1, 1, n), lengths)` at
  `codec.sample_rate` (44.1 kHz), float in [-1, 1], under autocast to `precision` on a GPU
  as fish-speech's own `TTSInferenceEngine` decodes.

Why not the higher entry points: `launch_thread_safe_queue` runs these same functions in a
thread of its own only to serialise requests (a lock does that here, and errors come back
as exceptions rather than queue messages); `TTSInferenceEngine` returns audio but keeps the
codes, so pinning a voice through it means sending turn 1 back as reference audio to be
DAC-encoded again on every turn.

One voice per dialogue (ENGINES.md §2.3): with no prompt the model draws a timbre at
random, and a seed does not pin it across texts. So the first utterance of a dialogue is
spoken with no prompt (`prompt_text=None, prompt_tokens=None`), and its (text, codes) are
offered to the dialogue's `DialogueVoice`; every later utterance is spoken with
`prompt_text=[text], prompt_tokens=[codes]`. Lists, always: a bare str and tensor are
wrapped at d3df505, but later `generate_long` tests `bool(prompt_tokens)`, which raises on
a tensor. Codes are kept on the CPU between turns (generate_long moves prompts there
anyway). Called without a `DialogueVoice`, an utterance is standalone, in a random timbre.

Each call is seeded (`torch.manual_seed`, every device). One request at a time per engine
(a lock); GPU throughput comes from several copies (about 12 GB each is recommended).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from actors.engines.tts import DialogueVoice, TTSConfig, TTSEngine
from schemas import VoiceChoice

CODEC_CONFIG = "modded_dac_vq"
# The LM reads the first four, the codec the last (fish-speech d3df505: llama.py, tokenizer.py).
CHECKPOINT_FILES = ("config.json", "model.pth", "tokenizer.tiktoken", "special_tokens.json", "codec.pth")
# SpeechMedAssist's values (the fish-speech defaults at d3df505), as floats: the server's
# request schema declares them strict floats.
TOP_P, TEMPERATURE, REPETITION_PENALTY = 0.8, 0.8, 1.1


def checked_model_dir(config: TTSConfig) -> Path:
    """The checkpoint folder, every file fish-speech reads from it present; else a clear error."""
    folder = Path(config.model_dir) if config.model_dir else None
    if folder is None or not folder.is_dir():
        raise FileNotFoundError(f"fishspeech: model_dir {config.model_dir!r} is not a folder; point it at a "
                                "downloaded openaudio-s1-mini checkpoint "
                                "(hf download fishaudio/openaudio-s1-mini --local-dir DIR)")
    missing = [str(folder / name) for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"fishspeech: the checkpoint in {folder} is incomplete, missing {', '.join(missing)}; "
                                "download fishaudio/openaudio-s1-mini again into it")
    return folder


class FishSpeechEngine(TTSEngine):
    def __init__(self, config: TTSConfig):
        model_dir = checked_model_dir(config)
        if config.repo_path:
            if not Path(config.repo_path).is_dir():
                raise FileNotFoundError(f"fishspeech: repo_path {config.repo_path!r} is not a folder; point it at a "
                                        "fish-speech checkout at d3df505, or leave it out with the package installed")
            if config.repo_path not in sys.path:
                sys.path.insert(0, config.repo_path)
        import torch
        from fish_speech.models.dac.inference import load_model
        from fish_speech.models.text2semantic.inference import generate_long, init_model

        self._torch, self._generate_long = torch, generate_long
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = torch.bfloat16 if config.precision == "bf16" else torch.float16
        self.compile = config.compile
        self.model, self._decode_one_token = init_model(str(model_dir), self.device, self.precision,
                                                        compile=config.compile)
        # As upstream's command line and queue worker do: fails at load, not on the first
        # request, when the KV cache does not fit (generate() sets it up once more at d3df505).
        with torch.device(self.device):
            self.model.setup_caches(max_batch_size=1, max_seq_len=self.model.config.max_seq_len,
                                    dtype=next(self.model.parameters()).dtype)
        self.codec = load_model(config_name=CODEC_CONFIG, checkpoint_path=str(model_dir / "codec.pth"),
                                device=self.device)
        self.sample_rate = int(self.codec.sample_rate)
        self._lock = threading.Lock()  # one KV cache of batch 1

    def _codes(self, text: str, prompt: tuple[str, Any] | None) -> Any:
        """The LM's codes for `text`, a (num_codebooks, T) tensor on the CPU; None if it made none."""
        prompt_text, prompt_tokens = ([prompt[0]], [prompt[1]]) if prompt is not None else (None, None)
        samples = []
        for response in self._generate_long(
                model=self.model, device=self.device, decode_one_token=self._decode_one_token, text=text,
                num_samples=1, max_new_tokens=0, top_p=TOP_P, repetition_penalty=REPETITION_PENALTY,
                temperature=TEMPERATURE, compile=self.compile, prompt_text=prompt_text, prompt_tokens=prompt_tokens):
            if response.action == "next":  # the end of the one sample asked for
                break
            samples.append(response.codes.cpu())
        if not samples:
            return None
        return self._torch.cat(samples, dim=1)

    def _audio(self, codes) -> np.ndarray:
        torch = self._torch
        indices = codes.to(self.device)
        lengths = torch.tensor([indices.shape[1]], device=self.device, dtype=torch.long)
        with torch.autocast(device_type=self.device.type, dtype=self.precision, enabled=self.device.type == "cuda"):
            audio, audio_lengths = self.codec.decode(indices=indices[None], feature_lengths=lengths)
        return audio[0, 0, : int(audio_lengths[0])].float().cpu().numpy()

    def synthesize(self, text: str, voice: VoiceChoice, seed: int,
                   dialogue: DialogueVoice | None = None) -> tuple[np.ndarray, int]:
        # `voice` says only "a random timbre"; which one is fixed by the dialogue's prompt.
        torch = self._torch
        prompt = dialogue.prompt if dialogue is not None else None
        with self._lock, torch.no_grad():
            torch.manual_seed(seed)
            codes = self._codes(text, prompt)
            if codes is None or codes.shape[1] == 0:
                return np.zeros(0, dtype=np.float32), self.sample_rate  # fails the audio checks: retried
            audio = self._audio(codes)
        if dialogue is not None and prompt is None:
            dialogue.offer((text, codes))
        return audio.astype(np.float32, copy=False), self.sample_rate

    def close(self) -> None:
        self.model = self.codec = self._decode_one_token = None
        if self._torch.cuda.is_available():
            self._torch.cuda.empty_cache()
