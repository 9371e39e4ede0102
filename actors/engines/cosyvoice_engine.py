"""CosyVoice2 zero-shot (FunAudioLLM/CosyVoice), imported lazily from a checkout or package.

Written against the repository after commit 622a3a1 (2025-12-08), where
`inference_zero_shot(tts_text, prompt_text, prompt_wav, ..., stream=False)` takes the
prompt as a *file path* (before, a 16 kHz tensor named `prompt_speech_16k`; pin the
commit). What the adapter relies on (../shared/ENGINES.md §1):

* `CosyVoice2(model_dir, load_jit, load_trt, load_vllm, fp16)`; a `model_dir` that does not
  exist is taken for a ModelScope id and downloaded, so a missing folder is refused here;
* the call yields one `{"tts_speech": tensor(1, n)}` per sentence chunk even with
  `stream=False`: every chunk is kept and concatenated (taking the first only, as the
  paper's scripts do, drops the rest of a long turn);
* 24 kHz output (`model.sample_rate`); prompts of at most 30 s (the pool guarantees it);
* batch 1: GPU throughput comes from several copies per GPU (fractional `num_gpus`);
* `frontend._extract_speech_token(wav_path)` gives the 25 Hz speech tokens (6,561 values)
  of a 16 kHz file of at most 30 s: the speech units of Stage II-b (ENGINES.md §1.4),
  taken from the audio kept so that units and audio agree.

Prompt clips on an object store are copied to a local temp file once per clip.
"""

from __future__ import annotations

import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import soundfile

from actors.audio import RATE
from actors.engines.tts import DialogueVoice, TTSConfig, TTSEngine
from schemas import VoiceChoice
from storage.fs import read_bytes, resolve


UNIT_WINDOW = 30 * RATE


class CosyVoice2Engine(TTSEngine):
    def __init__(self, config: TTSConfig):
        if not config.model_dir or not Path(config.model_dir).is_dir():
            raise FileNotFoundError(f"cosyvoice2: model_dir {config.model_dir!r} is not a folder; point it at a "
                                    "downloaded CosyVoice2-0.5B checkpoint (a missing folder would be fetched from ModelScope)")
        if config.repo_path:
            # The repository's own imports expect its root and its Matcha-TTS submodule on the path.
            for path in (config.repo_path, str(Path(config.repo_path) / "third_party" / "Matcha-TTS")):
                if path not in sys.path:
                    sys.path.insert(0, path)
        import torch
        from cosyvoice.cli.cosyvoice import CosyVoice2

        self._torch = torch
        self.model = CosyVoice2(config.model_dir, load_jit=config.load_jit, load_trt=config.load_trt,
                                load_vllm=False, fp16=config.fp16)
        self.sample_rate = int(self.model.sample_rate)
        self._local: dict[str, str] = {}
        self._lock = threading.Lock()
        self._tmp = tempfile.TemporaryDirectory(prefix="speechmed-prompts-")

    def _prompt_file(self, path: str) -> str:
        """A local path for the prompt clip (object-store clips are copied once)."""
        if "://" not in path:
            return path
        with self._lock:
            if path not in self._local:
                loc = resolve(path)
                local = Path(self._tmp.name) / f"{len(self._local)}{Path(loc.root).suffix}"
                local.write_bytes(read_bytes(loc, loc.root))
                self._local[path] = str(local)
            return self._local[path]

    def synthesize(self, text: str, voice: VoiceChoice, seed: int,
                   dialogue: DialogueVoice | None = None) -> tuple[np.ndarray, int]:
        # The reference clip fixes the timbre of every turn: `dialogue` is not needed.
        if voice.clip_path is None or voice.clip_transcript is None:
            raise ValueError("cosyvoice2 speaks zero-shot from a reference clip; this voice has none "
                             "(random-timbre voices need the random_timbre engine)")
        self._torch.manual_seed(seed)  # its LLM samples speech tokens
        chunks = [out["tts_speech"] for out in
                  self.model.inference_zero_shot(text, voice.clip_transcript, self._prompt_file(voice.clip_path), stream=False)]
        if not chunks:
            return np.zeros(0, dtype=np.float32), self.sample_rate
        audio = self._torch.cat(chunks, dim=1)[0].detach().cpu().numpy().astype(np.float32)
        return audio, self.sample_rate

    def speech_units(self, samples: np.ndarray) -> list[int]:
        # The tokenizer takes at most 30 s: longer audio is tokenised in 30-s windows.
        units: list[int] = []
        for start in range(0, max(len(samples), 1), UNIT_WINDOW):
            with tempfile.NamedTemporaryFile(suffix=".wav", dir=self._tmp.name) as wav:
                soundfile.write(wav.name, samples[start:start + UNIT_WINDOW], RATE, subtype="PCM_16")
                tokens, _ = self.model.frontend._extract_speech_token(wav.name)
                units += [int(t) for t in tokens.flatten().tolist()]
        return units

    def close(self) -> None:
        self._tmp.cleanup()
