"""Trainers on tiny in-process models: every SFT method, the eq. 6 loss normalisation, packing,
resume, determinism, DPO, distillation, and runs recorded in the warehouse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import factory
from factory.errors import InputError
from factory.models import chat
from factory.models import loss as losses
from factory.runners import training
from tests.conftest import write_jsonl
from tests.tiny_model import build
from trainers import _loop, _methods, sft

CONVERSATIONS = [
    [{"role": "user", "content": "Give a number"}, {"role": "assistant", "content": "Seven."}],
    [
        {"role": "system", "content": "Be short."},
        {"role": "user", "content": "Write a short poem about rain"},
        {"role": "assistant", "content": "Rain on the river, the city is long."},
        {"role": "user", "content": "Another"},
        {"role": "assistant", "content": "Rain."},
    ],
    [{"role": "user", "content": "Classify the review"}, {"role": "assistant", "content": "positive"}],
    [{"role": "user", "content": "Explain why"}, {"role": "assistant", "content": "Because the data is long and the answer is short."}],
]  # fmt: skip


def rows(n: int = 24) -> list[dict]:
    words = "rain river city story poem number answer question".split()
    return [
        {"instruction": f"Task {i}: write about the {words[i % 8]}", "output": f"The {words[i % 8]} is {i}.",
         "domain": "writing" if i % 2 else "facts"}
        for i in range(n)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def model_of(path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def test_assistant_targets_match_the_templates_generation_mask(tokenizer):
    examples = chat.encode(tokenizer, CONVERSATIONS, 512)
    for conversation, example in zip(CONVERSATIONS, examples, strict=True):
        reference = tokenizer.apply_chat_template(
            conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        assert example.ids == reference["input_ids"]
        ours = [label != chat.IGNORE for label in example.labels]
        assert ours == [bool(m) for m in reference["assistant_masks"]]
    last = chat.encode(tokenizer, CONVERSATIONS[1:2], 512, last_only=True)[0]
    assert 0 < last.targets < examples[1].targets  # only the final "Rain." turn


@pytest.mark.parametrize("name", sorted(chat.TEMPLATES))
def test_named_templates_mark_what_we_train_on(name, tiny_model):
    """Our named templates carry {% generation %} markers around exactly what we supervise, so TRL's
    assistant_only_loss and transformers' assistant mask agree with our trainer on them too."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    chat.use_template(tokenizer, name)
    for conversation, example in zip(CONVERSATIONS, chat.encode(tokenizer, CONVERSATIONS, 512), strict=True):
        reference = tokenizer.apply_chat_template(
            conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        assert example.ids == reference["input_ids"]
        assert [label != chat.IGNORE for label in example.labels] == [
            bool(m) for m in reference["assistant_masks"]
        ]
    assert chat.turn_end(tokenizer) == {"chatml": "<|im_end|>", "alpaca": tokenizer.eos_token}[name]
    # the text each renders (chat templates render with trim_blocks: a newline after a block tag is lost)
    two = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}] * 2
    rendered = tokenizer.apply_chat_template(two, tokenize=False)
    assert (
        rendered
        == {
            "chatml": "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n" * 2,
            "alpaca": "### Instruction:\nQ\n\n### Response:\nA</s>\n\n" * 2,
        }[name]
    )


def test_turn_end_is_the_templates_end_of_turn_marker(tokenizer):
    assert chat.turn_end(tokenizer) == "<|end|>"  # the tiny template: <|assistant|>\n...<|end|>\n


def test_loss_is_normalised_over_all_target_tokens_of_the_accumulated_batch(tiny_model, tokenizer):
    """Survey eq. 6 by hand: sum of per-token NLL over every row of the step / total target tokens."""
    examples = chat.encode(tokenizer, CONVERSATIONS, 512)
    assert len({e.targets for e in examples}) > 2  # rows of different lengths
    model = model_of(tiny_model)
    micro = [chat.collate([[e] for e in examples[:2]], tokenizer.pad_token_id),
             chat.collate([[e] for e in examples[2:]], tokenizer.pad_token_id)]  # fmt: skip
    loss, units = _loop.accumulate(model, micro, losses.sft_loss, losses.target_tokens)
    ours = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    token_losses = []
    for e in examples:
        logits = model(torch.tensor([e.ids])).logits[0, :-1]
        nll = -logits.log_softmax(-1)[torch.arange(len(e.ids) - 1), torch.tensor(e.ids[1:])]
        token_losses.append(nll[torch.tensor(e.labels[1:]) != chat.IGNORE])
    by_hand = torch.cat(token_losses).sum() / sum(len(t) for t in token_losses)
    by_hand.backward()
    assert units == sum(e.targets for e in examples)
    assert loss == pytest.approx(float(by_hand), rel=1e-5)
    for mine, theirs in zip(ours, (p.grad for p in model.parameters()), strict=True):
        assert torch.allclose(mine, theirs, atol=1e-6)
    per_row_mean = float(torch.stack([t.mean() for t in token_losses]).mean())
    assert abs(per_row_mean - loss) > 1e-3  # the normalisation the test tells apart


def test_packed_rows_do_not_attend_across_rows(tiny_model, tokenizer):
    examples = chat.encode(tokenizer, CONVERSATIONS, 512)
    bins = chat.pack(examples, 512)
    assert len(bins) == 1
    model = model_of(tiny_model)
    with torch.no_grad():
        packed = float(losses.sft_loss(model, chat.collate(bins, tokenizer.pad_token_id)))
        alone = sum(
            float(losses.sft_loss(model, chat.collate([[e]], tokenizer.pad_token_id))) for e in examples
        )
    assert packed == pytest.approx(alone, rel=1e-4)
    batch = chat.collate(bins, tokenizer.pad_token_id)
    assert "attention_mask" not in batch and (batch["position_ids"][0] == 0).sum() == len(examples)


def test_first_fit_decreasing_packing_wastes_little():
    import random

    rng = random.Random(0)
    examples = [chat.Example([1] * n, [1] * n) for n in (rng.randint(20, 300) for _ in range(400))]
    bins = chat.pack(examples, 1024)
    used = sum(len(e.ids) for b in bins for e in b)
    assert all(sum(len(e.ids) for e in b) <= 1024 for b in bins)
    assert 1 - used / (len(bins) * 1024) < 0.05


@pytest.fixture(scope="module")
def biased_model(tmp_path_factory):
    return build(tmp_path_factory.mktemp("biased") / "model", bias=True)


@pytest.fixture
def snapshot(wh, tmp_path):
    factory.import_file(wh, str(write_jsonl(tmp_path / "rows.jsonl", rows())))
    wh.create_snapshot("train")
    return "train"


@pytest.mark.parametrize("method", ["full", "lora", "prefix", "prompt", "ptuning", "ia3", "bitfit"])
def test_each_method_trains_and_lowers_the_loss(method, wh, snapshot, tiny_model, biased_model):
    model = biased_model if method == "bitfit" else tiny_model
    lr = {"full": 1e-3, "lora": 3e-2}.get(method, 1e-1)
    # one batch of all 24 rows per step: the first and last step losses are on the same data
    run = training.train(wh, snapshot, "sft", {"model": str(model), "method": method, "epochs": 15,
                                                "batch_size": 24, "learning_rate": lr, "eval_split": 0.0})  # fmt: skip
    trained = run["metrics"]["train"]
    assert trained["steps"] == 15 and trained["train_loss_last"] < trained["train_loss_first"] - 0.05
    assert 0 < trained["trainable_share"] <= 1
    net = model_of(model)
    base = sum(p.numel() for p in net.parameters())
    if method == "lora":  # eq. 8 by hand over every adapted linear layer (r = 8)
        linear = [
            m for name, m in net.named_modules() if isinstance(m, torch.nn.Linear) and name != "lm_head"
        ]
        adapted = sum(8 * (m.in_features + m.out_features) for m in linear)
        assert trained["lora_share_eq8"] == pytest.approx(adapted / base)
        assert trained["trainable_params"] == adapted
    if method == "bitfit":
        assert trained["trainable_params"] == sum(
            p.numel() for n, p in net.named_parameters() if n.endswith(".bias")
        )
    if method == "full":
        assert trained["trainable_share"] == 1
    stored = wh.sql(
        f"SELECT method, status, snapshot_digest, versions FROM runs WHERE id = '{run['id']}'"
    ).row(0)
    assert stored[:2] == (method, "succeeded") and stored[2] == run["digest"]
    assert "torch" in json.loads(stored[3]) and "peft" in json.loads(stored[3])


def test_bitfit_and_qlora_say_what_they_need(tiny_model):
    with pytest.raises(ValueError, match="no bias"):
        _methods.prepare(model_of(tiny_model), "bitfit", _methods.MethodSettings())
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA GPU"):
            _methods.prepare(model_of(tiny_model), "qlora", _methods.MethodSettings())
    with pytest.raises(ValueError, match="packing works with"):
        sft.SftConfig(method="prefix", packing=True)


def test_resume_from_a_checkpoint_ends_where_an_unbroken_run_ends(tiny_model, tokenizer, tmp_path):
    examples = chat.encode(tokenizer, CONVERSATIONS * 4, 512)
    settings = _loop.LoopSettings(max_steps=4, batch_size=2, save_steps=2, learning_rate=1e-2)

    def fresh():
        return _methods.prepare(model_of(tiny_model), "lora", _methods.MethodSettings())

    def batch(groups):
        return chat.collate(groups, tokenizer.pad_token_id)

    items = [[e] for e in examples]
    whole = fresh()
    straight = _loop.train(
        whole, items, batch, losses.sft_loss, losses.target_tokens, settings, tmp_path / "a"
    )

    def crash(log):
        if log.step == 3:
            raise KeyboardInterrupt

    broken = fresh()
    with pytest.raises(KeyboardInterrupt):
        _loop.train(
            broken, items, batch, losses.sft_loss, losses.target_tokens, settings, tmp_path / "b", crash
        )
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["step-2"]
    resumed_model = fresh()
    resumed = _loop.train(
        resumed_model, items, batch, losses.sft_loss, losses.target_tokens, settings, tmp_path / "b"
    )
    assert [round(s.loss, 6) for s in resumed] == [round(s.loss, 6) for s in straight]
    for a, b in zip(whole.parameters(), resumed_model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_same_snapshot_same_seed_same_metrics(wh, snapshot, tiny_model):
    values = {"model": str(tiny_model), "method": "lora", "max_steps": 3, "batch_size": 4, "eval_split": 0.25}
    evaluation = training.EvalSettings(eval_split=0.25, max_new_tokens=8)
    first = training.train(wh, snapshot, "sft", values, evaluation=evaluation)["metrics"]
    second = training.train(wh, snapshot, "sft", values, evaluation=evaluation)["metrics"]
    for part in ("eval", "eval_before"):
        a, b = first[part], second[part]
        assert (a["loss"], a["rouge_l"], a["bleu"], a["similarity"]) == (
            b["loss"],
            b["rouge_l"],
            b["bleu"],
            b["similarity"],
        )
    assert first["train"]["train_loss_last"] == second["train"]["train_loss_last"]
    assert first["eval"]["loss"] < first["eval_before"]["loss"]
    assert set(first["eval"]["per_domain"]) == {"facts", "writing"}


def test_dpo_prefers_the_chosen_answers(wh, tmp_path, tiny_model):
    pairs = [{"prompt": f"Question {i} about the river", "chosen": f"The river answer {i}.",
              "rejected": f"No idea {i}."} for i in range(16)]  # fmt: skip
    factory.import_file(wh, str(write_jsonl(tmp_path / "prefs.jsonl", pairs)))
    wh.create_snapshot("prefs")
    run = training.train(wh, "prefs", "dpo", {"model": str(tiny_model), "method": "lora", "epochs": 4, "batch_size": 4,
                                               "learning_rate": 5e-3, "beta": 0.5, "eval_split": 0.25},
                         evaluation=training.EvalSettings(eval_split=0.25, max_new_tokens=4))  # fmt: skip
    trained = run["metrics"]["train"]
    assert trained["train_loss_first"] == pytest.approx(
        0.6931, abs=1e-3
    )  # log 2: policy == reference at the start
    assert trained["train_loss_last"] < 0.6 and trained["eval_reward_accuracy"] > 0.5


def test_dpo_loss_is_eq_12(tiny_model, tokenizer):
    from trainers import dpo

    record = {"prompt": [{"role": "user", "content": "Pick one"}],
              "chosen": [{"role": "assistant", "content": "The river is long."}],
              "rejected": [{"role": "assistant", "content": "No."}]}  # fmt: skip
    [(chosen, rejected)] = dpo.pairs(tokenizer, [record], 512)
    model = model_of(tiny_model)

    def logp(e):
        logits = model(torch.tensor([e.ids])).logits[0, :-1].log_softmax(-1)
        picked = logits[torch.arange(len(e.ids) - 1), torch.tensor(e.ids[1:])]
        return picked[torch.tensor(e.labels[1:]) != chat.IGNORE].sum()

    with torch.no_grad():
        loss, margin = dpo.dpo_loss_sum(
            model, dpo.batch_of([(chosen, rejected, -4.0, -6.5)], tokenizer.pad_token_id), 0.3
        )
        expected = 0.3 * ((logp(chosen) + 4.0) - (logp(rejected) + 6.5))
    assert float(margin[0]) == pytest.approx(float(expected), rel=1e-5)
    assert float(loss) == pytest.approx(float(-torch.nn.functional.logsigmoid(expected)), rel=1e-5)


def test_distillation_pulls_the_student_towards_the_teacher(wh, snapshot, tiny_model, biased_model, tmp_path):
    from trainers import distill

    logits = torch.randn(6, 11)
    assert float(distill.kl_sum(logits, logits, 2.0)) == pytest.approx(0.0, abs=1e-5)
    teacher = torch.randn(6, 11)
    p, q = teacher.log_softmax(-1), logits.log_softmax(-1)
    by_hand = sum(float((p[k].exp() * (p[k] - q[k])).sum()) for k in range(6))
    assert float(distill.kl_sum(logits, teacher, 1.0)) == pytest.approx(by_hand, rel=1e-5)
    softer = (teacher / 2).log_softmax(-1), (logits / 2).log_softmax(-1)
    assert float(distill.kl_sum(logits, teacher, 2.0)) == pytest.approx(
        4 * float((softer[0].exp() * (softer[0] - softer[1])).sum()), rel=1e-5
    )

    run = training.train(wh, snapshot, "distill", {"model": str(tiny_model), "teacher": str(biased_model),
                                                    "method": "full", "alpha": 1.0, "epochs": 4, "batch_size": 8,
                                                    "learning_rate": 2e-3, "eval_split": 0.0})  # fmt: skip
    trained = run["metrics"]["train"]
    assert trained["train_loss_last"] < trained["train_loss_first"] * 0.8  # the KL to the teacher shrinks


def test_cli_train_eval_runs_and_compare(tmp_path, tiny_model):
    env_wh = ["--warehouse", str(tmp_path / "wh")]
    factory.init(tmp_path / "wh").close()
    cli = [sys.executable, "-m", "factory.cli"]
    write_jsonl(tmp_path / "rows.jsonl", rows())
    for args in (["import", str(tmp_path / "rows.jsonl"), "--no-progress"], ["snapshot", "create", "base"]):
        assert subprocess.run([*cli, *args, *env_wh], capture_output=True, text=True).returncode == 0
    done = subprocess.run([*cli, "train", "base", "--method", "lora", "--model", str(tiny_model), "--quiet",
                           "--set", "max_steps=2", "--set", "eval_split=0.25", *env_wh],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "eval before" in done.stdout and "eval after" in done.stdout and "trainable" in done.stdout
    with factory.open(tmp_path / "wh", read_only=True) as wh:
        trained = wh.sql("SELECT id FROM runs")["id"][0]
    evaluated = subprocess.run([*cli, "eval", trained, "--on", "base", "--split", "all", "--set", "max_new_tokens=4",
                                *env_wh], capture_output=True, text=True)  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    with factory.open(tmp_path / "wh", read_only=True) as wh:
        other = wh.sql("SELECT id FROM runs WHERE trainer = 'eval'")["id"][0]
    listed = subprocess.run(
        [*cli, "runs", *env_wh], capture_output=True, text=True, env={**os.environ, "COLUMNS": "250"}
    )
    assert trained[:10] in listed.stdout and "eval" in listed.stdout
    compared = subprocess.run(
        [*cli, "runs", "--compare", trained, other, *env_wh], capture_output=True, text=True
    )
    assert compared.returncode == 0 and "eval.rouge_l" in compared.stdout
    configured = subprocess.run([*cli, "train-config", "axolotl", "base", "--out", str(tmp_path / "ax"),
                                 "--set", f"model={tiny_model}", *env_wh], capture_output=True, text=True)  # fmt: skip
    assert configured.returncode == 0 and "run it: axolotl train" in configured.stdout
    bad = subprocess.run([*cli, "train", "base", "--method", "nope", "--model", str(tiny_model), *env_wh],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode != 0 and "method" in bad.stderr + bad.stdout


def test_llamafactory_and_axolotl_configs(wh, snapshot, tmp_path, tiny_model):
    import yaml

    from trainers import _external as external

    values = {
        "model": str(tiny_model),
        "method": "lora",
        "eval_split": 0.25,
        "max_length": 512,
        "template": "llama3",
    }
    lf = external.write_config(wh, "llamafactory", snapshot, tmp_path / "lf", values)
    config = yaml.safe_load((tmp_path / "lf" / "llamafactory.yaml").read_text())
    info = json.loads((tmp_path / "lf" / "data" / "dataset_info.json").read_text())
    assert config["dataset"] in info and config["eval_dataset"] in info and config["template"] == "llama3"
    assert (config["stage"], config["finetuning_type"], config["lora_rank"], config["lora_target"]) == (
        "sft",
        "lora",
        8,
        "all",
    )
    assert (tmp_path / "lf" / "data" / info[config["dataset"]]["file_name"]).exists()
    assert config["cutoff_len"] == 512 and lf["command"].startswith("llamafactory-cli train")

    ax = external.write_config(
        wh, "axolotl", snapshot, tmp_path / "ax", {**values, "method": "qlora", "template": None}
    )
    config = yaml.safe_load((tmp_path / "ax" / "axolotl.yaml").read_text())
    dataset = config["datasets"][0]
    assert (dataset["type"], dataset["field_messages"], dataset["roles_to_train"]) == (
        "chat_template",
        "messages",
        ["assistant"],
    )
    first = json.loads(Path(dataset["path"]).read_text().splitlines()[0])
    assert [m["role"] for m in first["messages"]][-1] == "assistant"
    assert (config["adapter"], config["load_in_4bit"], config["lora_target_linear"]) == ("qlora", True, True)
    assert (
        config["chat_template"] == "tokenizer_default" and ax["counts"]["train"] + ax["counts"]["eval"] == 24
    )

    pairs = [{"prompt": f"Q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(4)]
    factory.import_file(wh, str(write_jsonl(tmp_path / "p.jsonl", pairs)))
    wh.create_snapshot("pairs", where="rejected IS NOT NULL")
    external.write_config(wh, "axolotl", "pairs", tmp_path / "dpo", {**values, "stage": "dpo", "beta": 0.2})
    config = yaml.safe_load((tmp_path / "dpo" / "axolotl.yaml").read_text())
    line = json.loads(Path(config["datasets"][0]["path"]).read_text().splitlines()[0])
    assert (
        config["rl"] == "dpo"
        and config["rl_beta"] == 0.2
        and config["datasets"][0]["type"] == "chat_template.default"
    )
    assert line["chosen"]["role"] == "assistant" and line["messages"][-1]["role"] == "user"
    lf_dpo = external.write_config(
        wh, "llamafactory", "pairs", tmp_path / "lfdpo", {**values, "stage": "dpo"}
    )
    assert yaml.safe_load(Path(lf_dpo["config"]).read_text())["pref_beta"] == 0.1
    with pytest.raises(ValueError, match="use `factory train`"):
        external.write_config(wh, "axolotl", snapshot, tmp_path / "x", {**values, "method": "ia3"})
    with pytest.raises(ValueError, match="DPO needs preference pairs"):
        external.write_config(wh, "llamafactory", snapshot, tmp_path / "y", {**values, "stage": "dpo"})


def test_training_on_an_empty_snapshot_says_so(wh, tmp_path, tiny_model):
    factory.import_file(
        wh, str(write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Say hi", "output": "Hi"}]))
    )
    wh.create_snapshot("none", where="length(output) > 1000")
    with pytest.raises(InputError, match="snapshot 'none' has no rows: nothing to train dpo on"):
        training.train(wh, "none", "dpo", {"model": str(tiny_model), "method": "lora"})
    assert wh.sql("SELECT count(*) AS n FROM runs")["n"][0] == 0


def test_train_config_refuses_what_a_tool_would_misread_before_writing(wh, snapshot, tmp_path, tiny_model):
    import shutil

    import yaml

    from trainers import _external as external

    base = {"model": str(tiny_model), "method": "lora"}
    no_template = tmp_path / "plain-model"

    shutil.copytree(tiny_model, no_template)
    settings = json.loads((no_template / "tokenizer_config.json").read_text())
    settings.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(settings))
    (no_template / "chat_template.jinja").unlink(missing_ok=True)
    refused = [
        ("axolotl", {"chat_template": "llama3"}, "unknown chat template 'llama3'"),  # would render "llama3"
        ("llamafactory", {"model": str(no_template)}, "has no chat template"),  # LLaMA-Factory: `empty`
        ("axolotl", {"chat_template": "{{ raise_exception('no') }}"}, "fails to render"),
        (
            "axolotl",
            {"chat_template": "{% for m in messages %}{{ m['role'] }}{% endfor %}"},
            "does not write",
        ),
        ("llamafactory", {"template": "llama3\nmodel_name_or_path: /etc"}, "template names"),
        ("axolotl", {"template": "chatml", "chat_template": "alpaca"}, "not both"),
        ("axolotl", {"form": "alpaca"}, "form applies to LLaMA-Factory"),
        ("llamafactory", {"form": "alpaca", "stage": "dpo"}, "use form=sharegpt"),
    ]
    for k, (tool, values, message) in enumerate(refused):
        with pytest.raises(ValueError, match=message):
            external.write_config(wh, tool, snapshot, tmp_path / f"out{k}", {**base, **values})
        assert not (tmp_path / f"out{k}").exists()  # nothing half-written
    chatml = external.write_config(
        wh, "axolotl", snapshot, tmp_path / "ok", {**base, "chat_template": "chatml"}
    )
    assert any("will not train the turn-end marker '<|im_end|>'" in note for note in chatml["notes"])

    lf = external.write_config(
        wh, "llamafactory", snapshot, tmp_path / "lf", {**base, "chat_template": "alpaca"}
    )
    config = yaml.safe_load(Path(lf["config"]).read_text())
    assert (config["template"], config["default_system"]) == ("alpaca", "")


def test_dpo_on_a_snapshot_with_unpaired_rows_trains_on_the_pairs(wh, tmp_path, tiny_model):
    """The preference export skips rows without a rejected answer (counted); the row facts written
    beside it would not line up with its records, so none are written and training goes on."""
    pairs = [{"prompt": f"Question {i}", "chosen": f"Answer {i}.", "rejected": f"No {i}."} for i in range(6)]
    factory.import_file(wh, str(write_jsonl(tmp_path / "prefs.jsonl", pairs)))
    factory.import_file(wh, str(write_jsonl(tmp_path / "plain.jsonl", rows(3))))
    wh.create_snapshot("mixed")
    run = training.train(wh, "mixed", "dpo", {"model": str(tiny_model), "method": "lora", "max_steps": 1,
                                               "batch_size": 2, "eval_split": 0.0})  # fmt: skip
    data = Path(run["artifact"]).parent / "data"
    assert run["metrics"]["train"]["pairs"] == 6 and not (data / "train.rows.parquet").exists()
    assert json.loads((data / "export.json").read_text())["skipped"] == {"skipped_no_rejected_answer": 3}
