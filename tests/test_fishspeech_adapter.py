"""The FishSpeech adapter against a test double of the `fish_speech` package.

fish-speech cannot load here (no weights, no GPU, its checkout pins its own torch), so fake
`fish_speech.models.text2semantic.inference` (`init_model`, `generate_long`) and
`fish_speech.models.dac.inference` (`load_model`) modules are put at the import boundary.
They have the signatures of commit d3df505, record how they are called, and return what
the real ones return: `GenerateResponse`s with seeded random codes of shape
(num_codebooks, T) (six frames per character, a plausible pace at 21.5 frames/s), and a
codec decoding T frames into T x 2048 float samples at 44.1 kHz. The fake `generate_long`
tests its prompt the way the newer upstream one does (`bool(prompt_tokens)`), so a bare
tensor fails as it would there. What this does NOT exercise: the real checkpoint loading,
the codes the LM makes, whether a prompt really holds the timbre, the speech the codec
makes, compile time, and GPU memory per copy; those need a GPU run.
The synthesize stage runs for real around it (routing, per-dialogue voices, attempts under
the audio checks, resampling, FLAC), with real espeak for zero-shot voices."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from actors.audio import decode
from actors.registry import build_stage
from actors.worker import check_reconciles
from schemas import SourceDialogue, Turn, VoiceChoice

NUM_CODEBOOKS, FRAME = 10, 2048
RANDOM = VoiceChoice(engine="random_timbre", match="none", seed=78)
MATCHED = VoiceChoice(engine="zero_shot", match="gender_age", seed=77, speaker_gender="female", speaker_age_group="adult")


@dataclass
class GenerateResponse:
    action: str
    codes: torch.Tensor | None = None
    text: str | None = None


class FakeModel:
    """Test double of the DualARTransformer `init_model` returns."""

    def __init__(self, precision: torch.dtype):
        self.config = types.SimpleNamespace(max_seq_len=4096)
        self.weight = torch.zeros(1, dtype=precision)
        self.caches: list[dict] = []

    def parameters(self):
        yield self.weight

    def setup_caches(self, max_batch_size, max_seq_len, dtype=torch.bfloat16):
        self.caches.append({"max_batch_size": max_batch_size, "max_seq_len": max_seq_len, "dtype": dtype})


class FakeFish:
    """Test double of fish_speech's text2semantic and dac inference modules (d3df505 API)."""

    def __init__(self):
        self.init_args: list[dict] = []
        self.codec_args: list[dict] = []
        self.calls: list[dict] = []  # one per generate_long call, with the codes it made
        self.decodes = 0
        self.clip_decodes: set[int] = set()  # decode calls that come out at full scale (fail the checks)

    def init_model(self, checkpoint_path, device, precision, compile=False):
        self.init_args.append({"checkpoint_path": checkpoint_path, "device": device, "precision": precision,
                               "compile": compile})
        self.model = FakeModel(precision)
        return self.model, "decode_one_token"

    def generate_long(self, *, model, device, decode_one_token, text, num_samples=1, max_new_tokens=0, top_p=0.8,
                      repetition_penalty=1.1, temperature=0.8, compile=False, iterative_prompt=True, chunk_length=512,
                      prompt_text=None, prompt_tokens=None):
        assert model is self.model and decode_one_token == "decode_one_token" and num_samples == 1
        for value in (top_p, repetition_penalty, temperature):
            assert type(value) is float
        use_prompt = bool(prompt_text) and bool(prompt_tokens)  # raises on a bare multi-element tensor
        if use_prompt:
            assert isinstance(prompt_text, list) and isinstance(prompt_tokens, list)
            assert len(prompt_text) == len(prompt_tokens)
        frames = 6 * len(text)
        codes = torch.randint(0, 4096, (NUM_CODEBOOKS, frames))  # from the global generator, as the LM samples
        self.calls.append({"text": text, "prompt_text": prompt_text, "prompt_tokens": prompt_tokens,
                           "sampling": (top_p, temperature, repetition_penalty), "seed": torch.initial_seed(),
                           "codes": codes, "device": device})
        half = frames // 2  # the real one yields one sample; two pieces check they are joined
        yield GenerateResponse("sample", codes[:, :half], text)
        yield GenerateResponse("sample", codes[:, half:], text)
        yield GenerateResponse("next")

    def load_model(self, config_name, checkpoint_path, device="cuda"):
        self.codec_args.append({"config_name": config_name, "checkpoint_path": checkpoint_path, "device": device})
        fake = self

        class FakeDAC:
            sample_rate = 44_100

            def decode(self, indices, feature_lengths):
                assert indices.ndim == 3 and indices.shape[:2] == (1, NUM_CODEBOOKS)
                n = int(feature_lengths[0]) * FRAME
                t = torch.arange(n) / 44_100
                audio = 0.3 * torch.sin(2 * torch.pi * (150 + int(indices[0, 0, 0]) % 100) * t)
                if fake.decodes in fake.clip_decodes:
                    audio = torch.sign(audio)
                fake.decodes += 1
                return audio[None, None], feature_lengths * FRAME

        return FakeDAC()


@pytest.fixture
def fake_fish(monkeypatch: pytest.MonkeyPatch) -> FakeFish:
    fake = FakeFish()
    names = ["fish_speech", "fish_speech.models", "fish_speech.models.text2semantic",
             "fish_speech.models.text2semantic.inference", "fish_speech.models.dac", "fish_speech.models.dac.inference"]
    modules = {name: types.ModuleType(name) for name in names}
    modules["fish_speech.models.text2semantic.inference"].init_model = fake.init_model
    modules["fish_speech.models.text2semantic.inference"].generate_long = fake.generate_long
    modules["fish_speech.models.dac.inference"].load_model = fake.load_model
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return fake


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "openaudio-s1-mini"
    folder.mkdir()
    for name in ("config.json", "model.pth", "tokenizer.tiktoken", "special_tokens.json", "codec.pth"):
        (folder / name).write_bytes(b"x")
    return folder


def speak_stage(model_dir: Path, **params: object):
    stage = build_stage("synthesize", "speak", {
        "engine": {"kind": "espeak"},
        "random_timbre_engine": {"kind": "fishspeech", "model_dir": str(model_dir)},
        **params}, 4)
    stage.setup()
    return stage


def dialogue(id: str, voice: VoiceChoice, *patient: str) -> SourceDialogue:
    turns = []
    for text in patient:
        turns += [Turn(role="patient", text=text, speech_text=text), Turn(role="doctor", text="好的。", speech_text="好的。")]
    return SourceDialogue(id=id, source="s", source_key=id, turns=turns, voice=voice)


def test_loading_arguments_and_one_call(model_dir: Path, fake_fish: FakeFish, monkeypatch: pytest.MonkeyPatch) -> None:
    from actors.engines.tts import TTSConfig, build_tts

    monkeypatch.setattr(sys, "path", list(sys.path))
    repo = model_dir.parent / "fish-speech"
    repo.mkdir()
    engine = build_tts(TTSConfig(kind="fishspeech", model_dir=str(model_dir), repo_path=str(repo), compile=True,
                                 precision="fp16"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert sys.path[0] == str(repo)
    assert fake_fish.init_args == [{"checkpoint_path": str(model_dir), "device": device, "precision": torch.float16,
                                    "compile": True}]
    assert fake_fish.model.caches == [{"max_batch_size": 1, "max_seq_len": 4096, "dtype": torch.float16}]
    assert fake_fish.codec_args == [{"config_name": "modded_dac_vq", "checkpoint_path": str(model_dir / "codec.pth"),
                                     "device": device}]

    samples, rate = engine.synthesize("我头疼。", RANDOM, 1234)  # no dialogue: a standalone utterance
    (call,) = fake_fish.calls
    assert (call["prompt_text"], call["prompt_tokens"], call["seed"]) == (None, None, 1234)
    assert call["sampling"] == (0.8, 0.8, 1.1) and call["device"] == device
    assert rate == 44_100 and samples.dtype == np.float32 and len(samples) == 6 * 4 * FRAME  # both pieces decoded
    engine.close()

    bf16 = build_tts(TTSConfig(kind="fishspeech", model_dir=str(model_dir)))
    assert fake_fish.init_args[-1]["precision"] == torch.bfloat16 and fake_fish.init_args[-1]["compile"] is False
    bf16.close()


def test_missing_checkpoint_is_refused_naming_the_path(model_dir: Path, fake_fish: FakeFish) -> None:
    from actors.engines.tts import TTSConfig, build_tts

    with pytest.raises(FileNotFoundError, match="openaudio-s1-mini.*is not a folder"):
        build_tts(TTSConfig(kind="fishspeech", model_dir=str(model_dir.parent / "missing" / "openaudio-s1-mini")))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        build_tts(TTSConfig(kind="fishspeech"))
    (model_dir / "codec.pth").unlink()
    with pytest.raises(FileNotFoundError, match=f"missing {model_dir / 'codec.pth'}"):
        build_tts(TTSConfig(kind="fishspeech", model_dir=str(model_dir)))
    (model_dir / "codec.pth").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="repo_path .*nowhere.* d3df505"):
        build_tts(TTSConfig(kind="fishspeech", model_dir=str(model_dir), repo_path=str(model_dir / "nowhere")))
    assert fake_fish.init_args == []  # refused before anything loads


def test_a_dialogue_keeps_its_first_turn_as_the_prompt(tmp_path: Path, model_dir: Path, fake_fish: FakeFish) -> None:
    coughs = tmp_path / "coughs"
    coughs.mkdir()
    soundfile.write(coughs / "c.wav", 0.5 * np.random.default_rng(0).standard_normal(8_000), 16_000)
    stage = speak_stage(model_dir, cough_dir=str(coughs), doctor_turns=True)
    batch = [dialogue("r1", RANDOM, "医生，我<cough>嗓子疼了三天。", "晚上更厉害。", "没有发烧。"),
             dialogue("r2", RANDOM.model_copy(update={"seed": 79}), "我胃疼。", "吃了饭以后。"),
             dialogue("z", MATCHED, "我牙疼。")]
    result = stage.process(batch)
    check_reconciles(stage, batch, result)
    out = {t.id: t for t in result.accepted}
    # The matched voice goes to espeak; the random timbres and the assistant (a random timbre
    # too) to FishSpeech.
    assert {t.id: t.engine for t in out.values() if t.dialogue_id == "z"} == {"z-0": "espeak", "z-1": "fishspeech"}
    assert all(t.engine == "fishspeech" for t in out.values() if t.dialogue_id != "z")

    calls = fake_fish.calls
    patient = [c for c in calls if c["text"] != "好的。"]
    # r1: the first turn is split at the cough; its first piece draws the timbre, the rest
    # of the dialogue is prompted with it, as lists.
    assert [c["text"] for c in patient] == ["医生，我", "嗓子疼了三天。", "晚上更厉害。", "没有发烧。", "我胃疼。", "吃了饭以后。"]
    first = patient[0]
    assert first["prompt_text"] is None and first["prompt_tokens"] is None
    for later in patient[1:4]:
        assert later["prompt_text"] == ["医生，我"]
        (tokens,) = later["prompt_tokens"]
        assert torch.equal(tokens, first["codes"])
    # r2 starts its own voice, and is prompted with its own first turn.
    assert patient[4]["prompt_text"] is None
    assert patient[5]["prompt_text"] == ["我胃疼。"] and torch.equal(patient[5]["prompt_tokens"][0], patient[4]["codes"])
    # The assistant's turns are a voice of their own, not prompted with the patient's.
    doctor = [c for c in calls if c["text"] == "好的。"]
    assert len(doctor) == 6  # r1's three, r2's two, z's one
    for dialogue_calls in (doctor[:3], doctor[3:5], doctor[5:]):
        assert dialogue_calls[0]["prompt_text"] is None
        assert all(c["prompt_text"] == ["好的。"] and torch.equal(c["prompt_tokens"][0], dialogue_calls[0]["codes"])
                   for c in dialogue_calls[1:])

    # 44.1 kHz out of the engine, 16 kHz in the row: 6 frames of 2048 samples per character.
    samples, rate = decode(out["r1-2"].audio.bytes)
    assert rate == 16_000 and abs(len(samples) - round(6 * 6 * FRAME * 16_000 / 44_100)) <= 2
    stage.close()


def test_a_retried_first_turn_replaces_the_prompt(model_dir: Path, fake_fish: FakeFish) -> None:
    stage = speak_stage(model_dir)
    fake_fish.clip_decodes = {0}  # the first attempt at turn 0 comes out clipped
    result = stage.process([dialogue("r", RANDOM, "我头疼两天了。", "还有点恶心。")])
    first, second = sorted(result.accepted, key=lambda t: t.turn_index)
    assert (first.attempts, second.attempts) == (2, 1)

    failed, kept, later = fake_fish.calls
    assert failed["prompt_text"] is None and kept["prompt_text"] is None  # the retry draws a timbre anew
    assert failed["seed"] != kept["seed"]
    assert later["prompt_text"] == ["我头疼两天了。"]
    assert torch.equal(later["prompt_tokens"][0], kept["codes"]) and not torch.equal(kept["codes"], failed["codes"])


def test_dialogue_voice_keeps_only_kept_attempts() -> None:
    from actors.engines.tts import DialogueVoice

    voice = DialogueVoice()
    voice.begin_attempt()
    voice.offer("a")
    voice.offer("b")  # a later piece of the same attempt does not replace the first
    assert voice.prompt == "a"
    voice.begin_attempt()  # "a" failed its checks
    assert voice.prompt is None
    voice.offer("c")
    voice.keep_attempt()
    voice.begin_attempt()
    voice.offer("d")
    voice.keep_attempt()
    assert voice.prompt == "c"
