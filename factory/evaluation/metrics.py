"""Evaluate a model (a trained run's artifact, a model folder, or 'embedded') on a snapshot.

Metrics, each per row and then averaged, overall and per domain with the mean
over domains (survey eq. 13):
- held-out loss and perplexity: NLL of the reference assistant tokens, teacher-forced;
- ROUGE-L F1 and corpus BLEU (sacrebleu) of the greedy response against the
  reference, tokenised so that non-Latin text counts (word runs of any script,
  CJK characters one by one; sacrebleu's `zh` tokenizer when the references
  hold CJK, `intl` otherwise);
- IF-Score (eq. 11): cosine of MiniLM embeddings of response and reference;
- verifiable instructions (`factory.evaluation.ifeval`): the share of stated constraints obeyed,
  and per checker how many responses it checked and how many failed it (`checks`);
- with a `judge` teacher: an MT-Bench single-answer rating (1-10).
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, Field

from factory.errors import ConfigError
from factory.evaluation import ifeval, judge
from factory.evaluation.rouge import f1 as rouge_f1
from factory.models import loader
from factory.models.embeddings import BUNDLED
from factory.store.warehouse import Warehouse

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKENS = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")


EXAMPLES = 20  # responses kept with a run's metrics


class EvalSettings(BaseModel):
    split: Literal["eval", "all"] = Field(
        "eval", description="eval: the held-out split of the snapshot; all: every row"
    )
    eval_split: float = Field(0.1, ge=0, lt=1, description="held-out share (as at training)")
    seed: int = Field(0, description="split seed (as at training)")
    limit: int | None = Field(None, gt=0, description="evaluate at most this many rows")
    max_new_tokens: int = Field(128, ge=1)
    batch_size: int = Field(8, ge=1)
    chat_template: str | None = Field(None, description="as at training (default: the model's)")
    judge: str | None = Field(None, description="teacher spec grading answers MT-Bench style")
    embedding_model: str = BUNDLED


def tokens(text: str) -> list[str]:
    """Lowercase word runs of any script, CJK characters one by one."""
    return _TOKENS.findall(text.lower())


def rouge_l(reference: str, response: str) -> float:
    vocab: dict[str, int] = {}
    ids = [[vocab.setdefault(t, len(vocab)) for t in tokens(x)] for x in (reference, response)]
    return rouge_f1(ids[0], ids[1])


def bleu(references: list[str], responses: list[str]) -> float:
    import sacrebleu

    cjk = any(re.search(f"[{_CJK}]", r) for r in references)
    return float(sacrebleu.corpus_bleu(responses, [references], tokenize="zh" if cjk else "intl").score)


def eval_rows(wh: Warehouse, snapshot: str, settings: EvalSettings) -> pl.DataFrame:
    """id, domain, the instruction and the messages of the rows to evaluate on."""
    from factory.formats.export import messages, split_rows

    frame = split_rows(wh, snapshot, settings.eval_split if settings.split == "eval" else 0.0, settings.seed)
    if settings.split == "eval":
        frame = frame.filter(pl.col("_eval"))
    frame = frame.select(  # a preference row is judged against its chosen answer
        "id", pl.col("domain").fill_null("general"), "instruction", messages()
    )
    if frame.height == 0:
        raise ConfigError(
            f"snapshot '{snapshot}' has no rows to evaluate in split '{settings.split}': "
            "use split=all for an evaluation snapshot, or a larger eval_split"
        )
    return frame.head(settings.limit) if settings.limit else frame


def _losses(net: Any, tokenizer: Any, conversations: list) -> list[tuple[float, int]]:
    import torch

    from factory.models import chat
    from factory.models.loss import sft_loss, target_tokens

    examples = chat.encode(tokenizer, conversations, 4096)
    out = []
    with torch.no_grad():  # one row at a time: no padding to reason about, exact sums
        for example in examples:
            batch = chat.collate([[example]], tokenizer.pad_token_id)
            total = sft_loss(net, batch)
            out.append((float(total), target_tokens(batch)))
    return out


def _generate(net: Any, tokenizer: Any, conversations: list, settings: EvalSettings) -> list[str]:
    import torch

    from factory.models import chat

    prompts = chat.prompt_ids(tokenizer, conversations)
    marker = chat.turn_end(tokenizer)
    stops = _stops(net, tokenizer, marker)
    answers = []
    with torch.no_grad():
        for start in range(0, len(prompts), settings.batch_size):
            chunk = prompts[start : start + settings.batch_size]
            width = max(len(p) for p in chunk)
            ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in chunk])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
            made = net.generate(input_ids=ids, attention_mask=mask, max_new_tokens=settings.max_new_tokens,
                                do_sample=False, pad_token_id=tokenizer.pad_token_id, **stops)  # fmt: skip
            answers += tokenizer.batch_decode(made[:, width:], skip_special_tokens=True)
    return [(a.split(marker)[0] if marker else a).strip() for a in answers]  # cut where written as text


def _stops(net: Any, tokenizer: Any, marker: str) -> dict[str, Any]:
    """Where a response ends: the model's EOS and the chat template's end-of-turn `marker` (`<|im_end|>`,
    `<end_of_turn>`, ...), which is often another token; without it, generation runs past the answer."""
    found = getattr(net.generation_config, "eos_token_id", None)
    ids = list(found) if isinstance(found, list) else [found] if found is not None else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    marker_ids = tokenizer.encode(marker, add_special_tokens=False) if marker else []
    if len(marker_ids) == 1:
        ids += [i for i in marker_ids if i not in ids]
        return {"eos_token_id": ids}
    if marker_ids:  # a marker of several tokens: stop on the text (and cut it off)
        return {"eos_token_id": ids, "stop_strings": [marker], "tokenizer": tokenizer}
    return {"eos_token_id": ids} if ids else {}


def evaluate(
    wh: Warehouse, model: str, snapshot: str, settings: EvalSettings | None = None, run_id: str = "eval"
) -> dict[str, Any]:
    """Every metric of `model` on the snapshot's rows: overall, per domain, and the mean over domains.

    Judge calls go through the teacher cache under `run_id`."""
    from factory.models import chat
    from factory.models.embeddings import encode

    settings = settings or EvalSettings()
    rows = eval_rows(wh, snapshot, settings)
    net, tokenizer = loader.load(model)  # a trained adapter folder loads on its base model
    chat.use_template(tokenizer, settings.chat_template)
    conversations = rows["messages"].to_list()
    references = [next(m["content"] for m in reversed(c) if m["role"] == "assistant") for c in conversations]
    losses = _losses(net, tokenizer, conversations)
    responses = _generate(net, tokenizer, conversations, settings)
    similarity = (
        encode(responses, settings.embedding_model) * encode(references, settings.embedding_model)
    ).sum(1)
    followed = [ifeval.score(i, r) for i, r in zip(rows["instruction"], responses, strict=True)]
    per_row = pl.DataFrame(
        {
            "domain": rows["domain"],
            "nll": [s for s, _ in losses],
            "targets": [n for _, n in losses],
            "rouge_l": [rouge_l(ref, r) for ref, r in zip(references, responses, strict=True)],
            "similarity": similarity.tolist(),
            "instructions_followed": [f["followed"] if f else None for f in followed],
            "judge": judge.ratings(wh, run_id, str(settings.judge), rows["instruction"].to_list(), responses) if settings.judge else [None] * rows.height,
        },
        schema_overrides={"instructions_followed": pl.Float64, "judge": pl.Float64},
    )  # fmt: skip
    metrics = _summary(per_row, references, responses) | {"checks": _checks(followed)}
    domains = {}
    for (domain,), part in per_row.group_by("domain", maintain_order=True):
        picked = [k for k, d in enumerate(per_row["domain"]) if d == domain]
        domains[domain] = _summary(part, [references[k] for k in picked], [responses[k] for k in picked])
        domains[domain]["checks"] = _checks([followed[k] for k in picked])
    metrics["per_domain"] = dict(sorted(domains.items()))
    metrics["domain_mean"] = {
        key: sum(d[key] for d in domains.values() if d[key] is not None) / len(present)
        for key in ("loss", "rouge_l", "bleu", "similarity", "instructions_followed", "judge")
        if (present := [d for d in domains.values() if d[key] is not None])
    }
    metrics["examples"] = [  # the first rows' answers, to read next to the numbers
        {"instruction": i, "reference": ref, "response": r}
        for i, ref, r in zip(
            rows["instruction"][:EXAMPLES], references[:EXAMPLES], responses[:EXAMPLES], strict=True
        )
    ]
    return metrics


def _checks(scored: list[dict[str, Any] | None]) -> dict[str, dict[str, int]]:
    """Per instruction checker: how many responses it checked and how many failed it."""
    out: dict[str, dict[str, int]] = {}
    for row in scored:
        for checker, passed in (row or {}).get("checks", {}).items():
            counts = out.setdefault(checker, {"checked": 0, "failed": 0})
            counts["checked"] += 1
            counts["failed"] += not passed
    return dict(sorted(out.items()))


def _summary(per_row: pl.DataFrame, references: list[str], responses: list[str]) -> dict[str, Any]:
    targets = int(per_row["targets"].sum())
    loss = float(per_row["nll"].sum()) / targets if targets else None
    followed = per_row["instructions_followed"].drop_nulls()
    judged = per_row["judge"].drop_nulls()
    return {
        "rows": per_row.height,
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)) if loss is not None else None,
        "rouge_l": float(per_row["rouge_l"].mean()),
        "bleu": bleu(references, responses),
        "similarity": float(per_row["similarity"].mean()),
        "instructions_followed": float(followed.mean()) if followed.len() else None,
        "constrained_rows": followed.len(),
        "judge": float(judged.mean()) if judged.len() else None,
    }
