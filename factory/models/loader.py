"""The one loader for causal language models and their tokenizers.

Every part of the factory that needs a model (the hf teacher backend, the perplexity and
IFD filters, the trainers, evaluation, the Mosaic-IT token budget) loads it here, so a
model name means the same thing everywhere:

- `embedded`: the bundled Gemma 3 270M (`factory.models.embedded`);
- a `.gguf` file: dequantised by transformers once, saved as a transformers folder in the
  cache (`$FACTORY_CACHE`), later loads read that folder in seconds;
- a folder in `save_pretrained` layout, or a peft adapter folder (`adapter_config.json`:
  the adapter on its base model, as a trained run's artifact is);
- a hub id already in the local cache (nothing is downloaded here).

`load` takes the dtype (float32 by default; `auto` picks float32 on the CPU), a
quantization config (QLoRA's 4-bit), the device (`auto` moves to a GPU when there is
one) and the tokenizer's padding side; the tokenizer always gets a pad token (its EOS
when it has none).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from factory.errors import InputError, SetupError
from factory.models import embedded

DTYPES = ("auto", "float32", "bfloat16")


def _transformers() -> Any:
    # Nothing is downloaded at run time: a name that is not a folder, a GGUF file or 'embedded'
    # must already be in the local hub cache, and a typo must not send requests to the hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torch  # noqa: F401
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SetupError(
            "models need torch and transformers: pip install 'instruction-factory[local]'"
        ) from exc
    return transformers


def model_folder(name: str) -> Path | str:
    """Where a model named by a user lives: 'embedded', a GGUF file (converted once), a folder or a hub id."""
    if name == "embedded":
        return convert_gguf(embedded.gguf_file())
    if name.endswith(".gguf"):
        return convert_gguf(Path(name))
    return Path(name) if Path(name).exists() else name


def convert_gguf(path: Path) -> Path:
    """A transformers folder with the GGUF file's weights, converted once and cached."""
    if not path.is_file():
        raise InputError(f"GGUF file not found: {path}")
    stat = path.stat()
    tag = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = embedded.cache_folder() / "converted" / f"{path.stem}-{tag}"
    if (target / "config.json").exists():
        return target
    transformers = _transformers()
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    # transformers marks GGUF-loaded models as quantized and refuses to save them: the weights
    # are plain dequantised tensors, so move them into a fresh model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)  # whole or not at all: a killed conversion leaves only .partial
    return target


def load_tokenizer(name: str, padding_side: str | None = None) -> Any:
    """A model's tokenizer, with a pad token (its EOS when it has none)."""
    transformers = _transformers()
    folder = model_folder(name)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    except OSError as exc:
        raise InputError(_cannot(name, exc)) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    return tokenizer


def load(
    name: str,
    dtype: str = "float32",
    quantization: Any = None,
    device: str = "cpu",
    padding_side: str | None = None,
) -> tuple[Any, Any]:
    """A causal LM (in eval mode, as transformers loads it) and its tokenizer; see the module docstring."""
    transformers = _transformers()
    import torch

    if dtype not in DTYPES:
        raise InputError(f"dtype '{dtype}' is not one of {', '.join(DTYPES)}")
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    folder = model_folder(name)
    try:
        if (Path(folder) / "adapter_config.json").exists():  # a trained adapter: on its base model
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
        else:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                folder, dtype=torch_dtype, quantization_config=quantization
            )
    except OSError as exc:
        raise InputError(_cannot(name, exc)) from exc
    tokenizer = load_tokenizer(str(folder), padding_side)
    model.eval()
    if device == "auto" and torch.cuda.is_available():
        model.to("cuda")
    return model, tokenizer


def _cannot(name: str, exc: Exception) -> str:
    return (
        f"cannot load model '{name}': give a local model folder, a GGUF file, a hub id already in "
        f"the local cache, or 'embedded' ({exc})"
    )
