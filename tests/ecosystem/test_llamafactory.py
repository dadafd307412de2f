"""LLaMA-Factory (0.9.5, its own environment) trains on what `factory train-config llamafactory`
writes: SFT from the sharegpt and the alpaca form, DPO from pairs, on the tiny model on the CPU;
and its data pipeline supervises the same tokens per row as our trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import factory
from factory.models import chat
from tests.ecosystem.conftest import ROOT, run_tool
from trainers import _external as external

pytestmark = pytest.mark.ecosystem
SETTINGS = {"method": "lora", "eval_split": 0.1, "max_length": 512, "max_steps": 3, "batch_size": 2}


def train(cli: Path, config: str) -> dict:
    """Run `llamafactory-cli train CONFIG` as a user would; returns its trainer state."""
    run_tool(cli, "llamafactory-cli", "train", config, cwd=Path(config).parent)
    out = Path(yaml.safe_load(Path(config).read_text())["output_dir"])
    assert (out / "adapter_model.safetensors").stat().st_size > 0 and (out / "adapter_config.json").exists()
    return json.loads((out / "trainer_state.json").read_text())


@pytest.mark.parametrize(("form", "template"), [("sharegpt", None), ("alpaca", None), ("sharegpt", "chatml")])
def test_llamafactory_trains_sft_on_our_export(
    form, template, ecosystem, llamafactory_cli, tiny_model, tmp_path
):
    values = {**SETTINGS, "model": str(tiny_model), "form": form, "chat_template": template}
    written = external.write_config(ecosystem, "llamafactory", "sft", tmp_path / form, values)
    config = yaml.safe_load(Path(written["config"]).read_text())
    if template is None:
        assert "template" not in config  # LLaMA-Factory reads the model's own chat template, as we do
    else:  # its chatml adds <|im_start|> / <|im_end|> to a vocabulary without them
        assert (config["template"], config["resize_vocab"]) == ("chatml", True)
    state = train(llamafactory_cli, written["config"])
    assert state["global_step"] == 3
    losses = [entry["train_loss"] for entry in state["log_history"] if "train_loss" in entry]
    assert len(losses) == 1 and 0 < losses[0] < 20
    if form == "alpaca":  # multi-turn rows go to history; rows alpaca cannot hold are counted
        rows = ecosystem.sql("SELECT count(*) AS n FROM snapshot('sft')")["n"][0]
        assert written["counts"]["train"] + written["counts"]["eval"] == rows - sum(
            written["skipped"].values()
        )


def test_llamafactory_trains_dpo_on_our_pairs(ecosystem, llamafactory_cli, tiny_model, tmp_path):
    written = external.write_config(ecosystem, "llamafactory", "pairs", tmp_path / "dpo",
                                    {**SETTINGS, "model": str(tiny_model), "stage": "dpo"})  # fmt: skip
    state = train(llamafactory_cli, written["config"])
    assert state["global_step"] == 3
    assert any("eval_rewards/chosen" in entry for entry in state["log_history"])


def test_llamafactory_supervises_the_tokens_we_do(ecosystem, llamafactory_cli, tiny_model, tmp_path):
    """Per row, LLaMA-Factory's input ids equal ours and its labels cover our assistant tokens, plus
    exactly the turn separator that follows each assistant turn's end marker: its template slot for
    an assistant turn runs to the newline after <|end|>, while ours (like the template's
    {% generation %} mask and TRL's assistant_only_loss) ends at the marker."""
    written = external.write_config(
        ecosystem, "llamafactory", "sft", tmp_path / "lf", {**SETTINGS, "model": str(tiny_model)}
    )
    rows = tmp_path / "rows.jsonl"
    script = str(ROOT / "tests/ecosystem/llamafactory_rows.py")
    run_tool(llamafactory_cli, "python", script, written["config"], str(rows), cwd=tmp_path)
    theirs = [json.loads(line) for line in rows.read_text().splitlines()]
    factory.export(ecosystem, "sft", tmp_path / "ours", "openai", eval_split=0.1, seed=0)
    conversations = [r["messages"] for r in chat.read_jsonl(tmp_path / "ours" / "train.jsonl")]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    ours = chat.encode(tokenizer, conversations, 512)
    assert len(theirs) == len(ours) == written["counts"]["train"]
    newline = tokenizer.convert_tokens_to_ids(tokenizer.tokenize("\n"))
    for row, mine, conversation in zip(theirs, ours, conversations, strict=True):
        assert row["input_ids"] == mine.ids
        supervised = {k for k, label in enumerate(row["labels"]) if label != -100}
        targets = {k for k, label in enumerate(mine.labels) if label != chat.IGNORE}
        extra = supervised - targets
        assert targets <= supervised
        assert all(k - 1 in targets and [mine.ids[k]] == newline for k in extra)
        assert len(extra) == sum(m["role"] == "assistant" for m in conversation)
