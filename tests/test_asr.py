"""The ASR round trip of the audio checks: the CER, the Whisper engine for real, and
SenseVoice against a test double at its import boundary.

* `cer` is pure: identical texts score 0, each edit counts over the reference's length,
  punctuation, width, script (Traditional/Simplified), digits and the cough placeholder
  do not count.
* Whisper runs for real on a CPU: the transformers ASR pipeline on a tiny, randomly
  initialised `WhisperForConditionalGeneration` made in the test (no weights can be
  downloaded), over real espeak-ng speech. Its transcripts are meaningless, so the tests
  check the shapes and the stage's decisions, never the words. Its byte-level vocabulary
  and a 6-token limit keep each transcript to at most 6 characters, so against a reference
  of 6 or more characters the CER is at most 1 and `max_cer=1.0` passes, while
  `max_cer=0.0` can never pass.
* SenseVoice (FunASR) cannot load here (no weights, no GPU, FunASR not installed): a fake
  `funasr` module, a test double put in sys.modules, stands in for `funasr.AutoModel`.
  It records its arguments and answers with tagged text as the real model does.

Not exercised here: real SenseVoiceSmall or Whisper weights, transcripts that mean
anything, and GPU devices.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile
from pydantic import ValidationError

from actors.audio import to_mono_16k
from actors.audio_qc import QCParams, cer
from actors.engines.asr import ASRConfig, build_asr
from actors.engines.tts import TTSConfig, build_tts
from actors.registry import build_stage
from actors.worker import check_reconciles
from schemas import SourceDialogue, Turn, VoiceChoice

VOICE = VoiceChoice(engine="zero_shot", match="gender_age", seed=5, speaker_gender="female", speaker_age_group="adult")


def dialogue(i: int, *patient_texts: str) -> SourceDialogue:
    turns = []
    for text in patient_texts:
        turns += [Turn(role="patient", text=text, speech_text=text),
                  Turn(role="doctor", text="好的。", speech_text="好的。")]
    return SourceDialogue(id=f"d{i}", source="s", source_key=str(i), turns=turns, voice=VOICE)


# --- the CER --------------------------------------------------------------------------


def test_cer_counts_edits_over_the_reference() -> None:
    assert cer("我头疼了三天。", "我头疼了三天。") == 0.0
    assert cer("我头疼了三天", "我头痛了三天") == pytest.approx(1 / 6)  # one substitution
    assert cer("我头疼了三天", "我头疼三天") == pytest.approx(1 / 6)  # one deletion
    assert cer("我头疼", "我的头很疼啊") == pytest.approx(3 / 3)  # insertions can reach 1 and beyond
    assert cer("头疼", "嗯嗯嗯头疼嗯嗯嗯") == pytest.approx(6 / 2)


def test_cer_ignores_what_is_not_said() -> None:
    # Punctuation, spaces, full-width forms, case and the cough placeholder.
    assert cer("医生，我<cough>嗓子疼！", "医生 我嗓子疼") == 0.0
    assert cer("我的ＣＴ结果", "我的ct结果。") == 0.0
    # Traditional characters (Whisper) and digits (ASR writes what TTS read as words).
    assert cer("我头疼了三天，烧到三十八点五度。", "我頭疼了3天，燒到38.5度") == 0.0


def test_cer_with_nothing_to_say() -> None:
    assert cer("", "") == 0.0
    assert cer("<cough>。", "") == 0.0
    assert cer("<cough>", "咳咳") == 1.0  # anything heard where nothing was said is all wrong


def test_asr_and_threshold_configs_are_checked() -> None:
    with pytest.raises(ValidationError, match="model_dir"):
        ASRConfig(kind="whisper")
    with pytest.raises(ValidationError, match="language"):
        ASRConfig(kind="sensevoice", model_dir="/m", language="zn")  # SenseVoice would quietly auto-detect
    with pytest.raises(ValidationError, match="max_cer"):
        QCParams(max_cer=1.5)
    with pytest.raises(ValidationError, match="extra"):
        ASRConfig(kind="whisper", model_dir="/m", hub="hf")


@pytest.mark.parametrize("kind", ["sensevoice", "whisper"])
def test_a_missing_checkpoint_folder_is_refused(tmp_path: Path, kind: str) -> None:
    missing = tmp_path / "SenseVoiceSmall"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build_asr(ASRConfig(kind=kind, model_dir=str(missing), device="cpu"))
    stage = build_stage("synthesize", "speak", {"qc": {"asr": {"kind": kind, "model_dir": str(missing)}}}, 1)
    with pytest.raises(FileNotFoundError, match="hub ids are refused"):
        stage.setup()


# --- Whisper, for real, on a tiny random model ----------------------------------------


def make_tiny_whisper(out: Path, *, max_new_tokens: int = 6) -> Path:
    """A randomly initialised Whisper checkpoint (about 1 MB) the ASR pipeline loads from `out`.

    The vocabulary is the 256 byte-level symbols with no merges, so a token is one byte
    and `max_new_tokens` bytes decode to at most that many characters. Then Whisper's
    special tokens in their real order (start of transcript, the languages, tasks,
    no-timestamps), which the language and task prompts of `generate` rely on.
    """
    import torch
    from tokenizers import pre_tokenizers
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperTokenizer)
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    out.mkdir(parents=True, exist_ok=True)
    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[], pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": [
        "<|startoftranscript|>", *[f"<|{code}|>" for code in LANGUAGES], "<|translate|>", "<|transcribe|>",
        "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]})
    tokenizer.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out)

    def ids(token: str) -> int:
        return tokenizer.convert_tokens_to_ids(token)

    eot, start = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, d_model=64, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_target_positions=64, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=start))
    model.generation_config = GenerationConfig(
        decoder_start_token_id=start, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        max_new_tokens=max_new_tokens, max_length=None, begin_suppress_tokens=[eot], is_multilingual=True, no_timestamps_token_id=ids("<|notimestamps|>"),
        lang_to_id={f"<|{code}|>": ids(f"<|{code}|>") for code in LANGUAGES},
        task_to_id={"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")})
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper")))


def test_whisper_transcribes_each_clip(tiny_whisper: str) -> None:
    tts = build_tts(TTSConfig())
    clips = []
    for text in ("我头疼了三天。", "晚上咳嗽得厉害，睡不好。", "好的"):
        samples, rate = tts.synthesize(text, VOICE, 1)
        clips.append(to_mono_16k(samples, rate))
    asr = build_asr(ASRConfig(kind="whisper", model_dir=tiny_whisper, device="cpu", batch_size=2))
    heard = asr.transcribe(clips)
    assert len(heard) == 3 and all(isinstance(h, str) for h in heard)
    assert asr.transcribe(clips[:1]) == heard[:1]  # greedy decoding: batching does not change the answer
    assert asr.transcribe([]) == []
    asr.close()


def test_whisper_round_trip_in_the_synthesize_stage(tmp_path: Path, tiny_whisper: str) -> None:
    cough_dir = tmp_path / "coughs"
    cough_dir.mkdir()
    n = 8_000
    burst = 0.8 * np.exp(-np.linspace(0, 8, n)) * np.random.default_rng(0).standard_normal(n)
    soundfile.write(cough_dir / "cough-0.wav", burst, 16_000)
    asr = {"kind": "whisper", "model_dir": tiny_whisper, "device": "cpu"}
    batch = [dialogue(1, "我头疼了三天。", "医生，我<cough>嗓子疼了三天。"),
             dialogue(2, "晚上咳嗽得厉害。")]

    # A random model never says the text: with no error allowed every attempt fails, and
    # each dialogue is rejected with the CER and what was heard.
    strict = build_stage("synthesize", "speak", {"cough_dir": str(cough_dir),
                                                 "qc": {"asr": asr, "max_cer": 0.0, "max_attempts": 2}}, 9)
    strict.setup()
    result = strict.process(batch)
    check_reconciles(strict, batch, result)
    assert result.accepted == [] and [r.reason for r in result.rejected] == ["synthesize.qc_failed"] * 2
    for rejection in result.rejected:
        assert "2 times" in rejection.detail and "asr: CER" in rejection.detail and '"cer":' in rejection.detail

    # Transcripts of at most 6 characters against texts of 6 or more: CER <= 1 passes.
    lenient = build_stage("synthesize", "speak", {"cough_dir": str(cough_dir),
                                                  "qc": {"asr": asr, "max_cer": 1.0}}, 9)
    lenient.setup()
    result = lenient.process(batch)
    check_reconciles(lenient, batch, result)
    assert sorted(t.id for t in result.accepted) == ["d1-0", "d1-2", "d2-0"]
    for turn in result.accepted:
        assert turn.attempts == 1 and isinstance(turn.qc.asr_text, str)
        assert turn.qc.cer == pytest.approx(cer(turn.text, turn.qc.asr_text), abs=1e-4) and 0 < turn.qc.cer <= 1.0
    lenient.close()
    # Without ASR nothing is transcribed.
    plain = build_stage("synthesize", "speak", {}, 9)
    plain.setup()
    (turn,) = plain.process([dialogue(3, "我头疼了三天。")]).accepted
    assert turn.qc.cer is None and turn.qc.asr_text is None


# --- SenseVoice, against a test double of funasr --------------------------------------


class FakeAutoModel:
    """Test double of funasr.AutoModel with SenseVoiceSmall: records how it is built and
    called, and answers one {"key", "text"} per input with SenseVoice's tags, taking the
    text from `replies` in turn."""

    instances: list["FakeAutoModel"] = []
    replies: list[str] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls: list[dict] = []
        FakeAutoModel.instances.append(self)

    def generate(self, input, **kwargs):  # noqa: A002 (FunASR's name)
        self.calls.append({"input": input, **kwargs})
        out = []
        for i, _ in enumerate(input):
            text = FakeAutoModel.replies[(len(self.calls) - 1 + i) % len(FakeAutoModel.replies)]
            out.append({"key": f"rand_key_{i}", "text": f"<|zh|><|NEUTRAL|><|Speech|><|withitn|>{text}"})
        return out


@pytest.fixture
def fake_funasr(monkeypatch: pytest.MonkeyPatch):
    FakeAutoModel.instances.clear()
    FakeAutoModel.replies = ["你好。"]
    module = types.ModuleType("funasr")
    module.AutoModel = FakeAutoModel
    monkeypatch.setitem(sys.modules, "funasr", module)
    return FakeAutoModel


def test_sensevoice_calls_and_tag_stripping(tmp_path: Path, fake_funasr) -> None:
    model_dir = tmp_path / "SenseVoiceSmall"
    model_dir.mkdir()
    asr = build_asr(ASRConfig(kind="sensevoice", model_dir=str(model_dir), device="cuda:0", batch_size=8))
    (model,) = fake_funasr.instances
    assert model.kwargs == {"model": str(model_dir), "device": "cuda:0", "disable_update": True}
    clips = [np.zeros(16_000, np.float32), np.ones(8_000, np.float64) * 0.1]
    assert asr.transcribe(clips) == ["你好。", "你好。"]
    (call,) = model.calls
    assert {k: v for k, v in call.items() if k != "input"} == {
        "cache": {}, "language": "zh", "use_itn": True, "batch_size": 8, "fs": 16_000}
    assert [a.dtype for a in call["input"]] == [np.float32, np.float32]  # raw 16 kHz arrays, not paths
    assert [len(a) for a in call["input"]] == [16_000, 8_000]
    asr.close()


def test_sensevoice_round_trip_retries_then_rejects(tmp_path: Path, fake_funasr) -> None:
    model_dir = tmp_path / "SenseVoiceSmall"
    model_dir.mkdir()
    params = {"qc": {"asr": {"kind": "sensevoice", "model_dir": str(model_dir)}, "max_attempts": 3}}
    stage = build_stage("synthesize", "speak", params, 9)
    stage.setup()
    (model,) = fake_funasr.instances

    # Heard right, in its own writing (Traditional, digits, punctuation): CER 0, first try.
    fake_funasr.replies = ["我頭疼了3天！"]
    (turn,) = stage.process([dialogue(4, "我头疼了三天。")]).accepted
    assert (turn.qc.cer, turn.qc.asr_text, turn.attempts) == (0.0, "我頭疼了3天！", 1)

    # Wrong twice, then right: the third synthesis (a new seed) is kept.
    model.calls.clear()
    fake_funasr.replies = ["我肚子疼。", "我肚子疼。", "我头疼了三天"]
    (turn,) = stage.process([dialogue(5, "我头疼了三天。")]).accepted
    assert turn.attempts == 3 and turn.qc.cer == 0.0 and len(model.calls) == 3

    # Wrong every time: rejected with its scores after max_attempts transcriptions.
    model.calls.clear()
    fake_funasr.replies = ["我肚子疼。"]
    batch = [dialogue(6, "我头疼了三天。")]
    result = stage.process(batch)
    check_reconciles(stage, batch, result)
    (rejection,) = result.rejected
    assert rejection.reason == "synthesize.qc_failed" and len(model.calls) == 3
    assert "asr: CER 0.833" in rejection.detail and "我肚子疼" in rejection.detail
