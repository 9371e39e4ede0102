"""A tiny, randomly initialised Qwen2-architecture model and tokenizer, made locally.

No weights can be downloaded in tests or the demo, so they run the real engines (vLLM,
transformers) on this: schema-valid answers through structured outputs, meaningless text.
Production configs point at real checkpoints (Qwen2.5-14B/32B/72B-Instruct).
"""

from __future__ import annotations

from pathlib import Path

# Enough Chinese, English and JSON for a byte-level BPE to cover what prompts and answers use.
_CORPUS = [
    "医生，我最近总是头疼，晚上睡不好，血压150/95mmHg，需要去哪个科室？",
    "建议先到心内科复查血压，规律作息，少喝咖啡，必要时做头部CT。",
    "孩子发烧三十八度五，咳嗽有痰，已经两天了，要不要吃退烧药？",
    "患者：我胃胀反酸一个多月了。医生：有没有黑便？平时饮食怎么样？",
    '{"keep": true, "reason": "内容清楚，适合改写"} {"keep": false, "reason": "需要看图片"}',
    '{"rounds": [{"patient": "我头疼", "doctor": "多久了？"}]}',
    '{"gender": "female", "age_group": "adult"} {"gender": "unknown", "age_group": "unknown"}',
    "male female unknown child young_adult adult elderly true false null",
    "The patient reports a headache; please answer in JSON with keep and reason.",
    "<cough> 咳嗽 干咳 痰 发热 乏力 呼吸科 消化内科 妇科 儿科 皮肤科 骨科",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen-style chat template: <|im_start|>role\ncontent<|im_end|>\n ... <|im_start|>assistant\n
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tiny_model(out: Path, *, vocab_size: int = 640, seed: int = 0) -> Path:
    """Write a tokenizer and a random Qwen2 model (about 1 MB) to `out`; returns `out`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        bos_token=None, unk_token=None)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192, tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"), torch_dtype="float32",
    )
    Qwen2ForCausalLM(config).save_pretrained(out, safe_serialization=True)
    return out
