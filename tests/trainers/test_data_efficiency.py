"""Mixing, eq. 10's domain loss and the curriculum in the sft trainer: the order each step sees, checked
against the pacing formulas; the loss and its gradients checked by hand; runs through `factory train`."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from collections import Counter

import polars as pl
import pytest
import torch

import factory
from factory import config
from factory.errors import ConfigError
from factory.models import chat
from factory.runners import training
from factory.shares import apportion
from tests.conftest import write_jsonl
from trainers import _domain, _loop, _methods, _order, sft

TOPICS = ["tide pools", "bread", "bicycle gears", "solar panels", "chess", "bee colonies", "rivers", "glass"]


def mixed_rows() -> list[dict]:
    """Unequal domains (general 40, medical 12, legal 6) with long-tailed answer lengths."""
    rng = random.Random(3)
    out = []
    for domain, n in (("general", 40), ("medical", 12), ("legal", 6)):
        for k in range(n):
            topic = TOPICS[k % len(TOPICS)]
            words = " ".join(rng.choices([*topic.split(), "the", "and", "is", "of", "water", "time"],
                                         k=rng.choice([3, 5, 8, 20, 45])))  # fmt: skip
            out.append({"instruction": f"[{domain}] Question {k} about {topic}?", "output": words.capitalize(),
                        "domain": domain})  # fmt: skip
    return out


def settings(**values) -> sft.SftConfig:
    return config.validate(sft.SftConfig, {"model": "unused", "batch_size": 2, "grad_accum": 2} | values)


def flat(plan: _order.Plan) -> list[list[int]]:
    return [[k for micro in step for k in micro] for step in plan]


def test_without_mix_or_curriculum_the_plan_is_the_loops_own_schedule():
    cfg = settings(epochs=3, max_steps=11)
    assert _order.plan(["a"] * 17, None, cfg, cfg) == _loop.schedule(17, cfg)


def test_pacing_functions_by_hand():
    at = {"pacing_start": 0.2, "pacing_full": 0.5}  # every row open after 10 of 20 steps
    linear, root, step = (settings(pacing=p, **at) for p in ("linear", "root", "step"))
    assert _order.competence(0, 20, linear) == pytest.approx(0.2)
    assert _order.competence(5, 20, linear) == pytest.approx(0.2 + 0.8 * 0.5)
    assert _order.competence(5, 20, root) == pytest.approx(math.sqrt(0.04 + 0.96 * 0.5))
    assert _order.competence(5, 20, step) == pytest.approx(0.2 + 0.8 * 2 / 3)  # stage 2 of 0..3
    assert _order.competence(4, 20, step) == pytest.approx(0.2 + 0.8 * 1 / 3)
    for cfg in (linear, root, step):
        assert _order.competence(10, 20, cfg) == 1.0 and _order.competence(19, 20, cfg) == 1.0


@pytest.mark.parametrize("pacing", ["linear", "root", "step"])
def test_each_step_draws_only_from_the_easiest_open_share(pacing):
    n, per_step = 200, 4
    rng = random.Random(1)
    difficulty = [rng.random() for _ in range(n)]
    cfg = settings(pacing=pacing, pacing_start=0.1, pacing_full=0.8)
    plan = _order.plan(["general"] * n, difficulty, cfg, cfg)
    rank = {k: r for r, k in enumerate(sorted(range(n), key=lambda k: difficulty[k]))}
    steps = flat(plan)
    assert len(steps) == n // per_step  # as many steps as without a curriculum
    for t, items in enumerate(steps):
        open_ = max(per_step, math.ceil(_order.competence(t, len(steps), cfg) * n))
        assert max(rank[k] for k in items) < open_, (t, items)
    assert max(rank[k] for k in steps[0]) < 0.1 * n  # the first step: the easiest tenth only
    if pacing == "linear":  # fresh rows first: every row is seen once in the epoch
        assert sorted(k for items in steps for k in items) == list(range(n))
    mean_rank = [sum(rank[k] for k in items) / per_step for items in steps]
    assert sum(mean_rank[:10]) < sum(mean_rank[-10:])  # easy early, hard late


def test_hardest_first_reverses_the_order():
    difficulty = [float(k) for k in range(40)]
    cfg = settings(pacing_start=0.1)
    easy = flat(_order.plan(["g"] * 40, difficulty, cfg, cfg))[0]
    hard = flat(_order.plan(["g"] * 40, [-d for d in difficulty], cfg, cfg))[0]
    assert max(easy) < 4 and min(hard) >= 36


def test_mixture_shares_are_the_weights_with_largest_remainder():
    domains = ["general"] * 40 + ["medical"] * 12 + ["legal"] * 6
    picked = _order.mixture(domains, {"general": 1, "medical": 0.3, "legal": 0.3}, seed=0, epoch=0)
    counts = Counter(domains[k] for k in picked)
    # 58 items: 58/1.6 = 36.25, 58*0.3/1.6 = 10.875 each -> 36 + 11 + 11 = 58 (the .875s get the two)
    assert counts == {"general": 36, "medical": 11, "legal": 11}
    assert len(set(k for k in picked if domains[k] == "general")) == 36  # no repeat when enough rows
    legal = [k for k in picked if domains[k] == "legal"]
    assert set(legal) == {k for k, d in enumerate(domains) if d == "legal"}  # all 6, then 5 repeats
    assert apportion(10, {"a": 1, "b": 1, "c": 1}) == {"a": 4, "b": 3, "c": 3}
    assert _order.mixture(domains, {"general": 1, "medical": 1}, 0, 0) != _order.mixture(
        domains, {"general": 1, "medical": 1}, 0, 1
    )  # each epoch draws anew
    assert _order.left_out(domains, {"general": 1, "medical": 1}) == {"legal": 6}
    with pytest.raises(ConfigError, match=r"cooking.*general, legal, medical"):
        _order.mixture(domains, {"cooking": 1}, 0, 0)
    with pytest.raises(ConfigError, match="positive sum"):
        settings(mix={"general": 0})


def test_options_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="packing=false"):
        settings(packing=True, mix={"general": 1})
    with pytest.raises(ConfigError, match="set domain_alpha"):
        settings(consistency_beta=0.1)


def perturbed_lora(tiny_model):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model = _methods.prepare(model, "lora", settings(method="lora"))
    with torch.no_grad():  # LoRA starts as the identity: move B off zero so the KL term is not 0
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model


def test_domain_loss_is_eq_10_by_hand(tiny_model):
    """L = L_general + alpha L_domain + beta KL(start || model) on general answer tokens, each over
    its own token count across the accumulated batch; gradients equal the hand-made loss's."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    convs = [[{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]
             for r in mixed_rows()[::7]]  # fmt: skip
    examples = chat.encode(tokenizer, convs, 256)
    for k, e in enumerate(examples):
        e.domain = "general" if k % 3 else "medical"
    assert {e.domain for e in examples} == {"general", "medical"}
    model = perturbed_lora(tiny_model)
    cfg = settings(domain_alpha=0.3, consistency_beta=0.7)
    make_batch, loss_fn, units, weights = _domain.objective(cfg, tokenizer.pad_token_id,
                                                            _domain.reference(model, None))  # fmt: skip
    micro = [make_batch([[e] for e in examples[:3]]), make_batch([[e] for e in examples[3:]])]
    loss, n, terms = _loop.accumulate_terms(model, micro, loss_fn, units, weights)
    ours = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}

    model.zero_grad()
    nll = {"general": [], "medical": []}
    kl = []
    for e in examples:
        ids = torch.tensor([e.ids])
        logits = model(ids).logits[0, :-1]
        with torch.no_grad(), model.disable_adapter():
            start = model(ids).logits[0, :-1]
        target = torch.tensor(e.labels[1:]) != chat.IGNORE
        token = -logits.log_softmax(-1)[torch.arange(len(e.ids) - 1), torch.tensor(e.ids[1:])]
        nll[e.domain].append(token[target])
        if e.domain == "general":
            p, q = start[target].log_softmax(-1), logits[target].log_softmax(-1)
            kl.append((p.exp() * (p - q)).sum(-1))
    general, medical, kls = torch.cat(nll["general"]), torch.cat(nll["medical"]), torch.cat(kl)
    by_hand = general.mean() + 0.3 * medical.mean() + 0.7 * kls.mean()
    by_hand.backward()
    assert float(kls.mean()) > 1e-3  # the consistency term is really there
    assert loss == pytest.approx(float(by_hand), rel=1e-5)
    assert n == len(general) + len(medical)
    assert terms == pytest.approx(
        {"general": float(general.mean()), "domain": float(medical.mean()), "consistency": float(kls.mean())},
        rel=1e-5,
    )  # each term's own mean
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(ours[name], p.grad, atol=1e-6), name
    plain = float(torch.cat([general, medical]).mean())
    assert abs(plain - loss) > 1e-2  # eq. 10 is not eq. 6 here


def test_mix_domain_loss_and_curriculum_through_factory_train(wh, tmp_path, tiny_model):
    factory.import_file(wh, str(write_jsonl(tmp_path / "rows.jsonl", mixed_rows())))
    wh.create_snapshot("mixed")
    result = subprocess.run(
        [sys.executable, "-m", "factory.cli", "train", "mixed", "--model", str(tiny_model), "--method", "lora", "--mix", "general=1,medical=0.5",
         "--set", "domain_alpha=0.5", "--set", "consistency_beta=0.2", "--set", "curriculum=length",
         "--set", "eval_split=0.2", "--set", "batch_size=4", "--set", "max_steps=6", "--set", "learning_rate=0.01",
         "--warehouse", str(wh.folder), "--quiet"], capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads(wh.sql("SELECT metrics FROM runs")["metrics"][0])
    order = metrics["train"]["order"]
    folder = wh.folder / "runs" / wh.sql("SELECT id FROM runs")["id"][0] / "data"
    facts = pl.read_parquet(folder / "train.rows.parquet")
    train_rows = len(folder.joinpath("train.jsonl").read_text().splitlines())
    assert facts.height == train_rows
    assert order["mix_left_out"] == {"legal": facts["domain"].eq("legal").sum()}
    seen = order["items_per_domain"]
    assert set(seen) == {"general", "medical"} and sum(seen.values()) == 6 * 4
    assert order["curriculum"] == "length" and order["domain_loss"]["beta"] == 0.2
    assert set(metrics["train"]["train_terms_last"]) == {"general", "domain", "consistency"}
    assert metrics["train"]["steps"] == 6 and metrics["eval"]["per_domain"]


def test_curriculum_by_a_score_column_of_the_row_facts(wh, tmp_path, tiny_model):
    """`factory train` exports each row's latest filter scores; a curriculum can order by one."""
    factory.import_file(wh, str(write_jsonl(tmp_path / "rows.jsonl", mixed_rows()[:24])))
    wh.create_snapshot("base")
    with pytest.raises(ConfigError, match=r"no column 'score_made_up'.*length, loss"):
        training.train(wh, "base", "sft", {"model": str(tiny_model), "curriculum": "score_made_up",
                                           "max_steps": 1, "eval_split": 0.0})  # fmt: skip
    run = training.train(wh, "base", "sft", {"model": str(tiny_model), "curriculum": "loss", "pacing": "step",
                                             "max_steps": 3, "eval_split": 0.0})  # fmt: skip
    assert run["metrics"]["train"]["order"]["pacing"] == "step"


def test_a_loss_that_is_no_longer_finite_stops_the_run(wh, tmp_path, tiny_model):
    """A weight of 1e308 overflows the loss: the run fails with the reason instead of saving a NaN model
    recorded as succeeded."""
    factory.import_file(wh, str(write_jsonl(tmp_path / "rows.jsonl", mixed_rows()[::3])))
    wh.create_snapshot("few")
    with pytest.raises(ConfigError, match="the loss became"):
        training.train(wh, "few", "sft", {"model": str(tiny_model), "domain_alpha": 1e308, "max_steps": 2,
                                          "eval_split": 0.0})  # fmt: skip
    assert wh.sql("SELECT status FROM runs")["status"].to_list() == ["failed"]


def test_a_tampered_row_facts_file_or_a_text_curriculum_is_refused(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"messages": [{"role": "user", "content": f"Q{k}"},
                                                        {"role": "assistant", "content": f"A{k}"}]} for k in range(3)])  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    (folder / "train.rows.parquet").write_text("not parquet")
    with pytest.raises(ConfigError, match=r"cannot be read.*export the snapshot again"):
        sft.examples_for(settings(), tokenizer, folder)
    pl.DataFrame({"id": ["a", "b", "c"], "domain": [[1], [2], [3]]}).write_parquet(
        folder / "train.rows.parquet"
    )
    with pytest.raises(ConfigError, match="domain column is missing or not text"):
        sft.examples_for(settings(), tokenizer, folder)
    pl.DataFrame({"id": ["a", "b", "c"], "domain": ["x", "y", None]}).write_parquet(
        folder / "train.rows.parquet"
    )
    with pytest.raises(ConfigError, match="curriculum: id holds String, not numbers"):
        sft.examples_for(settings(curriculum="id"), tokenizer, folder)
    items, _ = sft.examples_for(settings(), tokenizer, folder)
    assert [group[0].domain for group in items] == ["x", "y", "general"]
