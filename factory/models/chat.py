"""From an export's conversations to token ids, loss targets and (packed) batches.

Every trainer reads the snapshot's export, renders each conversation with the
model's chat template (or a named default when it has none) and trains only on
assistant tokens. Which tokens an assistant turn owns is found by rendering the
conversation up to the turn (with the generation prompt) and through it: the
characters in between are the turn's, end-of-turn marker included, so any
template works, with or without `{% generation %}` markers. All rows are
tokenised in one batched call of the Rust tokenizer.

Packing concatenates rows into sequences of at most `max_length` tokens with
position ids restarting at 0 for each row; with no attention mask, transformers
builds a block-diagonal causal mask from those restarts, so no token attends
across rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from factory.errors import ConfigError
from factory.formats.readers import jsonl_records

IGNORE = -100
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")  # what a batch hands the model
# Named templates, with {% generation %} around what an assistant turn trains on, so tools that read
# the markers (transformers' assistant mask, TRL's assistant_only_loss) supervise what we do. A newline
# after a block tag is written {{ '\n' }}: chat templates render with trim_blocks, which drops a
# literal newline that follows {% endif %} or {% endgeneration %}.
TEMPLATES = {
    "chatml": (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|im_end|>{% endgeneration %}"
        "{% else %}{{ m['content'] }}<|im_end|>{% endif %}{{ '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    "alpaca": (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
        "{% elif m['role'] == 'user' %}### Instruction:\n{{ m['content'] }}\n\n"
        "{% else %}### Response:\n{% generation %}{{ m['content'] }}{{ eos_token }}{% endgeneration %}"
        "{{ '\\n\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}### Response:\n{% endif %}"
    ),
}


@dataclass
class Example:
    ids: list[int]
    labels: list[int]  # IGNORE where the token is not an assistant token
    domain: str | None = None  # the row's domain, for a trainer that mixes or weighs domains
    difficulty: float | None = None  # for a curriculum: lower is easier

    @property
    def targets(self) -> int:
        return sum(label != IGNORE for label in self.labels)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of an export file (none when the split was not written)."""
    if not path.exists():
        return []
    return [record for _, record in jsonl_records(path, path.read_text(encoding="utf-8"))]


def known_template(name: str) -> bool:
    """Whether `name` is one of our named templates or a Jinja text (a bare word such as `llama3` is neither:
    used as a template it would render as that literal word)."""
    return name in TEMPLATES or "{{" in name or "{%" in name


def use_template(tokenizer: Any, name: str | None) -> None:
    """Give the tokenizer a chat template: `name` (chatml, alpaca or a Jinja string), else its own."""
    if name:
        if not known_template(name):
            raise ConfigError(
                f"unknown chat template '{name}': choose {', '.join(TEMPLATES)} or give a Jinja template"
            )
        tokenizer.chat_template = TEMPLATES.get(name, name)
    elif not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "the model's tokenizer has no chat template: name one with chat_template=chatml "
            "(or alpaca, or a Jinja template)"
        )


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    import jinja2

    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    except jinja2.TemplateError as exc:  # syntax, undefined names, raise_exception(), the sandbox's refusals
        raise ConfigError(f"the chat template fails to render a conversation: {exc}") from exc


def turn_end(tokenizer: Any) -> str:
    """The marker the template closes an assistant turn with (`<|im_end|>`, `<end_of_turn>`, the EOS
    token...), whitespace after it left out; '' when the template writes none."""
    probe = "Answer-0f3a9c"
    rendered = _render(
        tokenizer, [{"role": "user", "content": "Q"}, {"role": "assistant", "content": probe}], False
    )
    if probe not in rendered:
        raise ConfigError("the chat template does not write the assistant's answer: nothing would be trained")
    return rendered[rendered.rfind(probe) + len(probe) :].strip()


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant turn in it."""
    spans = []
    for k, message in enumerate(messages):
        if message["role"] == "assistant":
            start = len(_render(tokenizer, messages[:k], True))
            through = _render(tokenizer, messages[: k + 1], False)
            spans.append((start, len(through.rstrip())))  # the turn's end marker, not the newline after it
    return _render(tokenizer, messages, False), spans


def encode(
    tokenizer: Any, conversations: list[list[dict[str, str]]], max_length: int, last_only: bool = False
) -> list[Example]:
    """Token ids and labels of each conversation (assistant tokens only; with `last_only`, only the last
    assistant turn's), cut at `max_length`."""
    if not conversations:  # a fast tokenizer fails on an empty batch
        return []
    rendered = [assistant_spans(tokenizer, c) for c in conversations]
    if last_only:
        rendered = [(text, spans[-1:]) for text, spans in rendered]
    batch = tokenizer([text for text, _ in rendered], add_special_tokens=False, return_offsets_mapping=True)
    examples = []
    for ids, offsets, (_, spans) in zip(batch["input_ids"], batch["offset_mapping"], rendered, strict=True):
        starts = np.array([o[0] for o in offsets])
        ends = np.array([o[1] for o in offsets])
        inside = np.zeros(len(ids), dtype=bool)
        for begin, end in spans:
            inside |= (starts >= begin) & (ends <= end) & (ends > starts)
        inside[:1] = False  # the first token of a sequence is never predicted
        labels = np.where(inside, np.array(ids), IGNORE)
        examples.append(Example(list(ids[:max_length]), labels[:max_length].tolist()))
    return examples


def prompt_ids(tokenizer: Any, conversations: list[list[dict[str, str]]]) -> list[list[int]]:
    """Token ids of each conversation up to its last assistant turn, ready to generate that turn."""
    texts = []
    for messages in conversations:
        last = max(k for k, m in enumerate(messages) if m["role"] == "assistant")
        texts.append(_render(tokenizer, messages[:last], True))
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def pack(examples: list[Example], max_length: int) -> list[list[Example]]:
    """Examples grouped first-fit-decreasing into bins of at most `max_length` tokens."""
    bins: list[list[Example]] = []
    room: list[int] = []
    for example in sorted(examples, key=lambda e: -len(e.ids)):
        size = len(example.ids)
        slot = next((k for k, free in enumerate(room) if free >= size), None)
        if slot is None:
            bins.append([example])
            room.append(max_length - size)
        else:
            bins[slot].append(example)
            room[slot] -= size
    return bins


def collate(groups: list[list[Example]], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch: each group (one row, or several packed) is a sequence, right-padded.

    A packed sequence gets position ids restarting per row and no attention mask (its
    padding is out of the loss and, as a sequence of its own, attends only to itself);
    unpacked rows get an attention mask over their padding.
    """
    width = max(sum(len(e.ids) for e in group) for group in groups)
    ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
    labels = torch.full((len(groups), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(groups), width), dtype=torch.long)
    mask = torch.zeros((len(groups), width), dtype=torch.long)
    packed = any(len(group) > 1 for group in groups)
    for row, group in enumerate(groups):
        at = 0
        for example in group:
            n = len(example.ids)
            ids[row, at : at + n] = torch.tensor(example.ids)
            labels[row, at : at + n] = torch.tensor(example.labels)
            positions[row, at : at + n] = torch.arange(n)
            mask[row, at : at + n] = 1
            at += n
        positions[row, at:] = torch.arange(width - at)  # padding: a sequence of its own
    tokens = torch.tensor(int(mask.sum()))
    if packed:
        return {"input_ids": ids, "labels": labels, "position_ids": positions, "tokens": tokens}
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "tokens": tokens}
