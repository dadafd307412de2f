"""The dataset card of an `hf` export: README.md with the YAML header the Hugging Face Hub reads.

Built from the snapshot's report facts (factory/reports/facts.py), so the card, the HTML
report and the JSON agree. The license is the one the user gave (`--license`), else the
one every row's source recorded in its metadata; never a default: with neither, the
header has no license and the card says how to give one.
"""

from __future__ import annotations

from typing import Any

import yaml

SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
         (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")]  # fmt: skip


def size_category(rows: int) -> str:
    return next((label for limit, label in SIZES if rows < limit), "n>100M")


def license_of(facts: dict[str, Any], given: str | None) -> tuple[str | None, str]:
    """(the license for the header or None, a sentence saying where it came from)."""
    if given:
        return given, f"License: {given}, as given when exporting."
    found = facts.get("licenses") or []
    rows = facts["snapshot"]["row_count"]
    if len(found) == 1 and found[0]["rows"] == rows:
        return str(
            found[0]["license"]
        ), f"License: {found[0]['license']}, as every source's records state it."
    if found:
        listed = ", ".join(f"{f['license']} ({f['rows']:,} rows)" for f in found)
        return None, (
            f"License: not one license. The sources' records state {listed}"
            f"{'' if sum(f['rows'] for f in found) == rows else ', the other rows none'}; "
            "check each source's terms and export with --license when you know the license of the whole."
        )
    return (
        None,
        "License: not stated. Export with --license ID (an SPDX id such as cc-by-4.0) once you know it.",
    )


def render(facts: dict[str, Any], files: dict[str, str], preference: bool, license: str | None = None) -> str:
    snap = facts["snapshot"]
    chosen, license_text = license_of(facts, license)
    header: dict[str, Any] = {}
    if chosen:
        header["license"] = chosen
    languages = [c["value"] for c in facts["counts"]["language"] if c["value"] != "(none)"]
    if languages:
        header["language"] = languages
    header["task_categories"] = ["text-generation"]
    header["tags"] = ["instruction-tuning"] + (["preference", "dpo"] if preference else ["sft"])
    header["size_categories"] = [size_category(snap["row_count"])]
    splits = {"train": files.get("train"), "test": files.get("eval")}
    header["configs"] = [
        {"config_name": "default", "data_files": [{"split": s, "path": p} for s, p in splits.items() if p]}
    ]
    lines = [
        "---",
        yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {snap['name']}",
        "",
        _sentence(snap["message"] or "An instruction-tuning dataset")
        + f" Snapshot `{snap['name']}` of an instruction-factory warehouse: {snap['row_count']:,} rows, "
        f"digest `{snap['digest']}`.",
        "",
        license_text,
        "",
        "## Contents",
        "",
        "| source | rows |",
        "|---|---:|",
        *[f"| {_cell(c['value'])} | {c['rows']:,} |" for c in facts["counts"]["source"]],
        "",
        "| generator | rows |",
        "|---|---:|",
        *[f"| {_cell(c['value'])} | {c['rows']:,} |" for c in facts["counts"]["generator"]],
        "",
        "## How it was cleaned",
        "",
        f"Of the {facts['funnel']['start']:,} rows in the warehouse when the snapshot was made:",
        "",
        *[
            f"- **{_cell(f['filter'])}** dropped {f['dropped']:,} "
            + (
                "(" + ", ".join(f"{_cell(r['reason'])} {r['rows']:,}" for r in f["reasons"]) + ")"
                if f["reasons"]
                else ""
            )
            for f in facts["funnel"]["filters"]
        ],
        f"- the snapshot's selection{' (' + _cell(snap['where_sql']) + ')' if snap.get('where_sql') else ''} "
        f"kept {facts['funnel']['selected']:,}.",
        "",
    ]
    if facts["teacher"]:
        models = sorted({str(t["model"]) for t in facts["teacher"]})
        calls = sum(t["calls"] for t in facts["teacher"])
        lines += [
            "## Teachers",
            "",
            f"{calls:,} teacher calls made or judged these rows: {', '.join(models)}.",
            "",
        ]
    if facts.get("recipe"):
        r = facts["recipe"]
        lines += [
            "## Provenance",
            "",
            f"Made by recipe `{_cell(r['recipe'])}`, step `{_cell(r['step'])}`.",
            "",
        ]
    lines += [
        "## Use",
        "",
        "```python",
        "from datasets import load_dataset",
        'dataset = load_dataset("path/to/this/folder")',
        "```",
        "",
    ]
    return "\n".join(lines)


def _sentence(text: str) -> str:
    text = _cell(text).strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")


def _cell(value: Any) -> str:
    """A value for a Markdown table or list: no line breaks, no pipes."""
    return str(value).replace("\n", " ").replace("|", "\\|")
