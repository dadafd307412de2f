"""Which parameters train: full fine-tuning, the peft methods, or BitFit (bias terms only).

Every method returns the model ready to train and its trainable share of the
parameters, which each run reports. For LoRA the share is the survey's eq. 8
summed over the adapted matrices: r(d + k) trainable numbers for each d x k
weight, against all the base model's parameters.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from factory.errors import ConfigError, SetupError

METHODS = ("full", "lora", "qlora", "prefix", "prompt", "ptuning", "ia3", "bitfit")
Method = Literal["full", "lora", "qlora", "prefix", "prompt", "ptuning", "ia3", "bitfit"]
PACKABLE = ("full", "lora", "qlora", "ia3", "bitfit")  # virtual-token methods shift positions


class MethodSettings(BaseModel):
    """The knobs of the parameter-efficient methods (each method reads its own)."""

    lora_r: int = Field(8, ge=1, description="LoRA / QLoRA rank r")
    lora_alpha: int = Field(16, ge=1, description="LoRA scaling alpha (scale = alpha / r)")
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | str = Field("all-linear", description="modules LoRA / IA3 adapt")
    virtual_tokens: int = Field(16, ge=1, description="prefix / prompt / P-tuning: virtual tokens")
    encoder_hidden_size: int = Field(128, ge=1, description="P-tuning: the prompt encoder's width")


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, all) parameters; for a peft model `all` is the base model's plus the adapter's."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def prepare(model: Any, method: str, settings: MethodSettings) -> Any:
    """The model with only `method`'s parameters left trainable."""
    if method == "full":
        model.requires_grad_(True)
        return model
    if method == "bitfit":
        model.requires_grad_(False)
        biases = [p for name, p in model.named_parameters() if name.endswith(".bias")]
        if not biases:
            raise ConfigError(
                "BitFit trains only bias terms and this model has none (Llama and Gemma have no biases): "
                "choose another method, or a model with biases (GPT-2, BERT, Qwen2 attention)"
            )
        for p in biases:
            p.requires_grad_(True)
        return model
    if method == "qlora":
        _check_qlora()
    import peft

    task = peft.TaskType.CAUSAL_LM
    configs = {
        "lora": lambda: peft.LoraConfig(task_type=task, r=settings.lora_r, lora_alpha=settings.lora_alpha,
                                        lora_dropout=settings.lora_dropout, target_modules=settings.target_modules),
        "qlora": lambda: peft.LoraConfig(task_type=task, r=settings.lora_r, lora_alpha=settings.lora_alpha,
                                         lora_dropout=settings.lora_dropout, target_modules=settings.target_modules),
        "prefix": lambda: peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=settings.virtual_tokens),
        "prompt": lambda: peft.PromptTuningConfig(task_type=task, num_virtual_tokens=settings.virtual_tokens),
        "ptuning": lambda: peft.PromptEncoderConfig(task_type=task, num_virtual_tokens=settings.virtual_tokens,
                                                    encoder_hidden_size=settings.encoder_hidden_size),
        "ia3": lambda: peft.IA3Config(task_type=task, target_modules=_ia3_targets(model, settings),
                                      feedforward_modules=_feedforward(model)),
    }  # fmt: skip
    if method not in configs:
        raise ConfigError(f"unknown method '{method}': choose one of {', '.join(METHODS)}")
    if method == "qlora":
        model = peft.prepare_model_for_kbit_training(model)
    return peft.get_peft_model(model, configs[method]())


def _check_qlora() -> None:
    import torch

    if not torch.cuda.is_available():
        raise SetupError(
            "QLoRA quantises the base model to 4 bits with bitsandbytes, which needs a CUDA GPU; this machine "
            "has none. Use method=lora on CPU (same adapters, full-precision base)."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise SetupError("QLoRA needs bitsandbytes: pip install 'instruction-factory[train-gpu]'") from exc


def quantization(method: str) -> Any:
    """The 4-bit NF4 loading config QLoRA loads the base model with (None for the other methods)."""
    if method != "qlora":
        return None
    _check_qlora()
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)  # fmt: skip


def _linear_names(model: Any) -> set[str]:
    import torch

    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def _feedforward(model: Any) -> list[str]:
    return sorted(_linear_names(model) & {"down_proj", "fc2", "c_proj", "dense_4h_to_h", "w2"})


def _ia3_targets(model: Any, settings: MethodSettings) -> list[str]:
    """IA3's paper scales keys, values and the feed-forward's second layer."""
    if settings.target_modules != "all-linear":
        return list(settings.target_modules)
    found = sorted(_linear_names(model) & {"k_proj", "v_proj", "key", "value"}) + _feedforward(model)
    if not found:
        raise ConfigError("IA3: name target_modules for this model (no k_proj / v_proj / down_proj found)")
    return found


def lora_share(model: Any) -> float | None:
    """Eq. 8 summed: sum of r(d + k) over the LoRA-adapted d x k matrices, over the base model's parameters."""
    adapted = 0
    for module in model.modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            r = module.r["default"]
            d, k = module.base_layer.weight.shape
            adapted += r * (d + k)
    if not adapted:
        return None
    base = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    return adapted / base
