"""Export-and-configure adapters for LLaMA-Factory and axolotl.

A team that trains with one of those tools keeps it: `factory train-config`
exports the snapshot in the tool's dataset format, registers it the way the tool
wants, and writes a YAML config its CLI accepts (`llamafactory-cli train
llamafactory.yaml`, `axolotl train axolotl.yaml`), mapped from the same
settings our `sft` / `dpo` trainers take. Launching the tool stays the user's
choice. Field names follow the tools' documented configs: LLaMA-Factory's
`stage`, `finetuning_type`, `lora_rank`, `lora_target`, `pref_beta`,
`quantization_bit`, `dataset_dir`, `template`, `cutoff_len`; axolotl's
`base_model`, `datasets` (`type: chat_template`, `field_messages`,
`roles_to_train`; `chat_template.default` with `field_chosen` /
`field_rejected` for DPO), `adapter`, `lora_r`, `lora_target_linear`, `rl`,
`sequence_len`, `micro_batch_size`. Both tools run on what this writes in tests/ecosystem/
(their own environments: `make llamafactory-env`, `make axolotl-env`).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from factory import config
from factory.errors import ConfigError, InputError
from factory.formats import export
from factory.models import chat
from factory.store import outputs, snapshots
from factory.store.warehouse import Warehouse
from trainers.sft import SftConfig

TOOLS = ("llamafactory", "axolotl")


class ExternalConfig(SftConfig):
    stage: Literal["sft", "dpo"] = Field("sft", description="supervised fine-tuning or DPO")
    beta: float = Field(0.1, gt=0, description="DPO beta")
    template: str | None = Field(
        None,
        description="the tool's chat template name (LLaMA-Factory: e.g. llama3, qwen, gemma3, alpaca) "
        "[default: the model's own template, as our trainer uses]",
    )
    form: Literal["sharegpt", "alpaca"] = Field(
        "sharegpt", description="LLaMA-Factory: the dataset form written (alpaca: single turns plus history)"
    )


# Our named templates (factory.models.chat.TEMPLATES) and LLaMA-Factory's of the same layout.
LLAMAFACTORY_TEMPLATES = {"chatml": "chatml", "alpaca": "alpaca"}
TOOL_TEMPLATE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def _check(tool: str, cfg: ExternalConfig) -> None:
    """Settings that would be ignored or are not what they claim, refused before anything is written."""
    if cfg.template is not None and not TOOL_TEMPLATE.fullmatch(cfg.template):
        raise ConfigError(
            f"template must be one of {tool}'s template names (letters, digits, _ . -), got {cfg.template!r}"
        )
    if cfg.template and cfg.chat_template:
        raise ConfigError(
            "give template (the tool's template name) or chat_template (ours: chatml, alpaca or Jinja), not both"
        )
    name = cfg.chat_template
    if name and not chat.known_template(name):
        raise ConfigError(
            f"unknown chat template '{name}': ours are {', '.join(chat.TEMPLATES)} or a Jinja text; for "
            f"{tool}'s own template of that name use template={name}"
        )
    if tool == "axolotl" and "form" in cfg.model_fields_set:
        raise ConfigError("form applies to LLaMA-Factory; axolotl reads OpenAI messages")
    if cfg.form == "alpaca" and cfg.stage == "dpo":
        raise ConfigError("LLaMA-Factory DPO: use form=sharegpt (our alpaca files hold no rejected answer)")


def _llamafactory_template(cfg: ExternalConfig) -> str | None:
    """LLaMA-Factory's template: the one named, else ours by name, else none (LLaMA-Factory then reads
    the tokenizer's chat template, as our trainer does; its `default` is a Human:/Assistant: layout
    the model was never trained on)."""
    if cfg.template:
        return cfg.template
    if cfg.chat_template is None:
        return None
    if cfg.chat_template in LLAMAFACTORY_TEMPLATES:
        return LLAMAFACTORY_TEMPLATES[cfg.chat_template]
    raise ConfigError(
        "LLaMA-Factory takes a template by name, not a Jinja text: set template=NAME (one of its templates), "
        "or chat_template=chatml or alpaca"
    )


def _method(tool: str, method: str) -> str:
    supported = {"llamafactory": ("full", "lora", "qlora"), "axolotl": ("full", "lora", "qlora")}[tool]
    if method not in supported:
        raise ConfigError(
            f"{tool} trains {', '.join(supported)}; for {method} use `factory train` (our sft trainer has it)"
        )
    return method


def _model_path(name: str) -> str:
    from factory.models.loader import model_folder

    return str(model_folder(name))


def _llamafactory_settings(cfg: ExternalConfig, notes: list[str]) -> dict[str, Any]:
    """LLaMA-Factory's template settings for the template our trainer would use."""
    template = _llamafactory_template(cfg)
    # without a template LLaMA-Factory falls back to an `empty` one: the model must have its own
    tokenizer = _tokenizer(cfg, notes) if not cfg.template else None
    settings: dict[str, Any] = {"template": template} if template else {}
    if template == "chatml" and tokenizer is not None and "<|im_end|>" not in tokenizer.get_vocab():
        settings["resize_vocab"] = True  # LLaMA-Factory adds <|im_start|> / <|im_end|> as new tokens
    if cfg.chat_template == "alpaca":  # ours writes no system prompt where a row has none; LLaMA-Factory's
        settings["default_system"] = ""  # alpaca template would add "Below is an instruction..."
    return settings


def llamafactory(
    wh: Warehouse,
    snapshot: str,
    out: Path,
    cfg: ExternalConfig,
    force: bool,
    notes: list[str],
) -> dict[str, Any]:
    method = _method("llamafactory", cfg.method)
    places = wh.protected_paths()
    path = outputs.check_file(out / "llamafactory.yaml", places, force)
    fmt = "llamafactory" if cfg.form == "sharegpt" else "alpaca"
    if fmt == "alpaca":
        outputs.check_folder(out / "data", ["dataset_info.json"], places, force)
    # the template settings read the tokenizer: after the path checks, before anything is written
    template = _llamafactory_settings(cfg, notes)
    out.mkdir(parents=True, exist_ok=True)
    exported = export.export(wh, snapshot, out / "data", fmt, eval_split=cfg.eval_split, seed=cfg.seed,
                             name=snapshot, force=force)  # fmt: skip
    if fmt == "alpaca":  # the sharegpt export registers itself; the alpaca files are registered here
        info = export.dataset_info(snapshot, exported["files"], False, "alpaca")
        text = json.dumps(info, indent=2) + "\n"
        outputs.write_file(
            out / "data" / "dataset_info.json", lambda target: target.write_text(text), places, force
        )
    config: dict[str, Any] = {
        "model_name_or_path": _model_path(cfg.model),
        "stage": cfg.stage,
        "do_train": True,
        "finetuning_type": "full" if method == "full" else "lora",
        "dataset": snapshot,
        "dataset_dir": str((out / "data").resolve()),
        "cutoff_len": cfg.max_length,
        "packing": cfg.packing,
        "output_dir": str((out / "llamafactory-out").resolve()),
        "per_device_train_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "learning_rate": cfg.learning_rate,
        "num_train_epochs": float(cfg.epochs),
        "lr_scheduler_type": "linear",
        "warmup_ratio": cfg.warmup_ratio,
        "weight_decay": cfg.weight_decay,
        "seed": cfg.seed,
        "logging_steps": min(10, cfg.max_steps or 10),
        "report_to": "none",
    }
    config |= template
    if cfg.max_steps:
        config["max_steps"] = cfg.max_steps
    if method != "full":
        config |= {"lora_rank": cfg.lora_r, "lora_alpha": cfg.lora_alpha, "lora_dropout": cfg.lora_dropout,
                   "lora_target": "all" if cfg.target_modules == "all-linear" else ",".join(cfg.target_modules)}  # fmt: skip
    if method == "qlora":
        config |= {"quantization_bit": 4, "quantization_method": "bnb"}
    if cfg.stage == "dpo":
        config |= {"pref_beta": cfg.beta, "pref_loss": "sigmoid"}
    if "eval" in exported["files"]:
        config |= {"eval_dataset": f"{snapshot}_eval", "per_device_eval_batch_size": cfg.batch_size,
                   "eval_strategy": "epoch"}  # fmt: skip
    outputs.write_file(
        path, lambda target: target.write_text(yaml.safe_dump(config, sort_keys=False)), places, force
    )
    return {"tool": "llamafactory", "config": str(path), "data": str(out / "data"), "counts": exported["counts"],
            "skipped": exported["skipped"], "notes": notes, "command": f"llamafactory-cli train {path}"}  # fmt: skip


def _tokenizer(cfg: ExternalConfig, notes: list[str]) -> Any | None:
    """The model's tokenizer with the template our trainer would use; None, with a note, when the model
    is not on this machine (a config may be written here for a model on the training machine)."""
    from factory.models import loader

    try:
        tokenizer = loader.load_tokenizer(cfg.model)
    except InputError as exc:
        notes.append(
            f"{exc}: its chat template was not checked here, and the config relies on the tool reading it "
            "(axolotl: add eot_tokens with the template's turn-end token if it is not the EOS token)"
        )
        return None
    chat.use_template(tokenizer, cfg.chat_template)
    return tokenizer


def _axolotl_template(cfg: ExternalConfig, notes: list[str]) -> dict[str, Any]:
    """axolotl's chat template settings for the template our trainer would use, and the turn-end marker
    as an `eot_tokens` entry when it is one token (axolotl otherwise trains only the EOS token, so a
    model whose turns end in <|im_end|> would never learn to stop); `notes` says when it cannot be."""
    if cfg.template:
        notes.append(
            f"with template={cfg.template} axolotl's template decides where a turn ends: add eot_tokens to the "
            "config if its turns end with a marker other than the EOS token"
        )
        return {"chat_template": cfg.template}
    if cfg.chat_template is None:
        settings: dict[str, Any] = {"chat_template": "tokenizer_default"}
    else:  # our template's text, so axolotl renders rows exactly as our trainer does
        settings = {
            "chat_template": "jinja",
            "chat_template_jinja": chat.TEMPLATES.get(cfg.chat_template, cfg.chat_template),
        }
    tokenizer = _tokenizer(cfg, notes)
    if tokenizer is None:
        return settings
    marker = chat.turn_end(tokenizer)
    if marker and marker in tokenizer.get_vocab():
        settings["eot_tokens"] = [marker]
    elif marker and marker != tokenizer.eos_token:
        notes.append(
            f"axolotl will not train the turn-end marker {marker!r}: it is not one token of this tokenizer "
            "(our trainer trains its pieces); use a model whose vocabulary has it"
        )
    return settings


def axolotl(
    wh: Warehouse,
    snapshot: str,
    out: Path,
    cfg: ExternalConfig,
    force: bool,
    notes: list[str],
) -> dict[str, Any]:
    method = _method("axolotl", cfg.method)
    if method != "full":
        notes.append(
            "on a CPU add lora_mlp_kernel: false, lora_qkv_kernel: false and lora_o_kernel: false to the config "
            "(axolotl's fused LoRA kernels need CUDA)"
        )
    places = wh.protected_paths()
    path = outputs.check_file(out / "axolotl.yaml", places, force)
    data = out / "data"
    fmt = "preference" if cfg.stage == "dpo" else "openai"
    pairs = [f"axolotl-{split}.jsonl" for split in ("train", "eval")] if cfg.stage == "dpo" else []
    outputs.check_folder(data, pairs, places, force)
    # the template settings read the tokenizer: after the path checks, before anything is written
    template = _axolotl_template(cfg, notes)
    out.mkdir(parents=True, exist_ok=True)
    exported = export.export(
        wh, snapshot, data, fmt, eval_split=cfg.eval_split, seed=cfg.seed, force=force, openai_check=False
    )
    if cfg.stage == "dpo":  # axolotl's chat_template.default: messages (prompt), chosen and rejected messages
        for split, file in exported["files"].items():
            records = chat.read_jsonl(data / file)
            lines = [
                {"messages": r["prompt"], "chosen": r["chosen"][0], "rejected": r["rejected"][0]}
                for r in records
            ]
            text = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines)
            outputs.write_file(
                data / f"axolotl-{split}.jsonl",
                lambda target, text=text: target.write_text(text),
                places,
                force,
            )
        dataset = {"type": "chat_template.default", "field_messages": "messages", "field_chosen": "chosen",
                   "field_rejected": "rejected"}  # fmt: skip
        files = {split: f"axolotl-{split}.jsonl" for split in exported["files"]}
    else:
        dataset = {"type": "chat_template", "field_messages": "messages", "roles_to_train": ["assistant"],
                   "train_on_eos": "turn"}  # fmt: skip
        files = dict(exported["files"])
    config: dict[str, Any] = {
        "base_model": _model_path(cfg.model),
        **template,
        "datasets": [
            {"path": str((data / files["train"]).resolve()), "ds_type": "json", **copy.deepcopy(dataset)}
        ],
        "dataset_prepared_path": str((out / "axolotl-prepared").resolve()),
        "output_dir": str((out / "axolotl-out").resolve()),
        "sequence_len": cfg.max_length,
        "sample_packing": cfg.packing,
        "micro_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "num_epochs": cfg.epochs,
        "learning_rate": cfg.learning_rate,
        "optimizer": "adamw_torch",
        "lr_scheduler": "linear",
        "warmup_ratio": cfg.warmup_ratio,
        "weight_decay": cfg.weight_decay,
        "seed": cfg.seed,
        "train_on_inputs": False,
    }
    if "eval" in files:
        config["test_datasets"] = [{"path": str((data / files["eval"]).resolve()), "ds_type": "json", "split": "train",
                                    **copy.deepcopy(dataset)}]  # fmt: skip
    if cfg.max_steps:
        config["max_steps"] = cfg.max_steps
    if method != "full":
        config |= {"adapter": method, "lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha,
                   "lora_dropout": cfg.lora_dropout}  # fmt: skip
        if cfg.target_modules == "all-linear":
            config["lora_target_linear"] = True
        else:
            config["lora_target_modules"] = list(cfg.target_modules)
    if method == "qlora":
        config["load_in_4bit"] = True
    if cfg.stage == "dpo":
        config |= {"rl": "dpo", "rl_beta": cfg.beta}
    outputs.write_file(
        path, lambda target: target.write_text(yaml.safe_dump(config, sort_keys=False)), places, force
    )
    return {"tool": "axolotl", "config": str(path), "data": str(data), "counts": exported["counts"],
            "skipped": exported["skipped"], "notes": notes, "command": f"axolotl train {path}"}  # fmt: skip


def write_config(
    wh: Warehouse, tool: str, snapshot: str, out: Path, values: dict[str, Any], force: bool = False
) -> dict[str, Any]:
    """Export `snapshot` for `tool` and write its training config; returns the paths and the command to run.

    Files already in `out` are replaced only with `force`; `out` may not lie inside the warehouse."""
    if tool not in TOOLS:
        raise ConfigError(f"unknown tool '{tool}': choose {' or '.join(TOOLS)}")
    cfg = config.validate(ExternalConfig, values)
    _check(tool, cfg)
    if cfg.stage == "dpo":  # before anything is written: a DPO config over rows without pairs trains nothing
        rows, unpaired = wh.sql(
            f"SELECT count(*), count(*) FILTER (WHERE rejected IS NULL) FROM {snapshots.table(wh, snapshot)}"
        ).row(0)
        if unpaired or not rows:
            raise ConfigError(
                f"snapshot '{snapshot}' has {unpaired:,} row(s) without a rejected answer and {rows - unpaired:,} "
                "pair(s): DPO needs preference pairs"
            )
    outputs.check_folder(out, [], wh.protected_paths(), force)
    return (llamafactory if tool == "llamafactory" else axolotl)(wh, snapshot, out, cfg, force, [])
