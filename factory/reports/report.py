"""`factory report`: write a snapshot's report as an HTML page or as JSON, from the same facts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from factory.errors import ConfigError
from factory.reports import facts as gathering
from factory.store import outputs, provenance

if TYPE_CHECKING:
    from factory.store.warehouse import Warehouse

Format = Literal["html", "json"]


def write(
    wh: Warehouse,
    snapshot: str,
    out: str | Path,
    fmt: Format = "html",
    compare: str | None = None,
    tokenizer: str = "embedded",
    force: bool = False,
) -> dict[str, Any]:
    """Gather the snapshot's facts and write them to `out` (outside the warehouse); returns the facts."""
    if fmt not in ("html", "json"):
        raise ConfigError(f"--format {fmt}: choose html or json")
    places = wh.protected_paths()
    outputs.check_file(out, places, force)
    facts = gathering.gather(wh, snapshot, compare=compare, tokenizer=tokenizer)
    if provenance.step() is not None:  # written by a recipe step: `factory run` finds it done
        facts = {"recipe_step": provenance.step(), **facts}
    if fmt == "json":
        text = json.dumps(facts, indent=2, default=str, ensure_ascii=False) + "\n"
    else:
        from factory.reports import html

        text = html.render(facts)
    outputs.write_file(out, lambda path: path.write_text(text, encoding="utf-8"), places, force)
    return facts
