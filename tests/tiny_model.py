"""A tiny causal LM built on the spot: random weights, a BPE tokenizer trained here, a chat template.

Small enough to generate in milliseconds on one core, and shaped so that vLLM's CPU
attention accepts it (head_dim 32).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ '\\n' }}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|end|>{% endgeneration %}"
    "{% else %}{{ m['content'] }}<|end|>{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{{ '\\n' }}{% endif %}"
)
WORDS = (
    "write explain list give describe summarise translate classify find the a of to and in story poem "
    "city rain river number sentence email recipe review task answer question short long first last "
    "positive negative why how what example input output label yes no data code table"
).split()


def corpus(n: int = 3000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for k in range(n):
        words = rng.choices(WORDS, k=rng.randint(3, 14))
        lines.append(f"{k % 20}. " + " ".join(words).capitalize() + rng.choice([".", "?", "!", ":"]))
    return lines


def build(
    folder: Path,
    vocab: int = 512,
    seed: int = 0,
    bias: bool = False,
    width: int = 64,
    layers: int = 2,
    texts: list[str] | None = None,
) -> Path:
    """Write a tiny Llama model and its tokenizer to `folder` (reused when already there).

    `bias` gives its attention and MLP layers bias terms (for BitFit). `width` is the hidden size
    (a multiple of 32: heads stay 32 wide, one key/value head) and the MLP is twice as wide;
    `layers` the number of decoder layers; `texts` what the tokenizer learns from (default: `corpus`).
    The defaults are the model every test uses."""
    if width < 32 or width % 32:
        raise ValueError(f"width {width}: use a multiple of 32 (heads are 32 wide)")
    if (folder / "config.json").exists():
        return folder
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts if texts is not None else corpus(seed=seed),
        trainers.BpeTrainer(
            vocab_size=vocab, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=width // 32,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attention_bias=bias,
        mlp_bias=bias,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    settings = folder / "tokenizer_config.json"  # older readers (vLLM) want the concrete class name
    data = json.loads(settings.read_text())
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    settings.write_text(json.dumps(data, indent=2))
    return folder
