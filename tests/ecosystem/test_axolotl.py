"""axolotl (0.19, its own environment) reads what `factory train-config axolotl` writes:
`axolotl preprocess` tokenises every exported row with exactly the tokens our trainer supervises
(assistant turns through their end-of-turn marker), and `axolotl train` runs SFT and DPO steps on
the tiny model on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from factory.models import chat
from tests.ecosystem.conftest import run_tool
from trainers import _external as external

pytestmark = pytest.mark.ecosystem
SETTINGS = {"method": "lora", "eval_split": 0.1, "max_length": 512, "max_steps": 3, "batch_size": 2}
# On the CPU: axolotl's fused LoRA kernels are triton kernels for CUDA (on a GPU leave them on).
CPU = {"lora_mlp_kernel": False, "lora_qkv_kernel": False, "lora_o_kernel": False}


def run(cli: Path, verb: str, config: str) -> None:
    run_tool(cli, "axolotl", verb, config, cwd=Path(config).parent)


def on_cpu(config: str) -> None:
    path = Path(config)
    path.write_text(yaml.safe_dump(yaml.safe_load(path.read_text()) | CPU, sort_keys=False))


def prepared(folder: Path) -> list[pa.Table]:
    """The tokenised splits `axolotl preprocess` saved (Arrow stream files, one folder per split)."""
    tables = []
    for file in sorted(folder.glob("*/data-*.arrow")):
        with pa.memory_map(str(file)) as source:
            tables.append(pa.ipc.open_stream(source).read_all())
    return tables


def test_axolotl_preprocess_supervises_exactly_our_tokens(ecosystem, axolotl_cli, tiny_model, tmp_path):
    written = external.write_config(
        ecosystem, "axolotl", "sft", tmp_path, {**SETTINGS, "model": str(tiny_model)}
    )
    config = yaml.safe_load(Path(written["config"]).read_text())
    assert config["eot_tokens"] == ["<|end|>"]  # the tiny template's turn end, which we train on
    run(axolotl_cli, "preprocess", written["config"])
    splits = prepared(Path(config["dataset_prepared_path"]))
    assert sorted(len(t) for t in splits) == sorted(written["counts"].values())
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    for split, file in (("train", "train.jsonl"), ("eval", "eval.jsonl")):
        conversations = [r["messages"] for r in chat.read_jsonl(Path(written["data"]) / file)]
        ours = {tuple(e.ids): e for e in chat.encode(tokenizer, conversations, 512)}
        table = next(t for t in splits if len(t) == written["counts"][split])
        for ids, labels in zip(table["input_ids"].to_pylist(), table["labels"].to_pylist(), strict=True):
            mine = ours.pop(tuple(ids))  # axolotl shuffles: rows are matched by their tokens
            assert labels == mine.labels, tokenizer.decode(ids)
        assert not ours  # every exported row was tokenised


def test_axolotl_trains_sft_and_dpo_on_the_cpu(ecosystem, axolotl_cli, tiny_model, tmp_path):
    for snapshot, stage in (("sft", "sft"), ("pairs", "dpo")):
        written = external.write_config(ecosystem, "axolotl", snapshot, tmp_path / stage,
                                        {**SETTINGS, "model": str(tiny_model), "stage": stage})  # fmt: skip
        on_cpu(written["config"])
        run(axolotl_cli, "train", written["config"])
        out = Path(yaml.safe_load(Path(written["config"]).read_text())["output_dir"])
        assert (out / "adapter_model.safetensors").stat().st_size > 0
        state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
        assert state["global_step"] == 3
        losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
        assert len(losses) == 3 and all(0 < loss < 20 for loss in losses)
