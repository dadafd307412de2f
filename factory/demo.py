"""`make demo`: the main job end to end on the embedded defaults (no network, no GPU, no key).

It builds a fresh warehouse in demo-out/, imports the seed tasks and one small
file in each other format, freezes two snapshots, runs two SQL queries, exports
two trainer formats and prints a one-screen summary. Later parts of the factory
(teachers, filters, trainers) extend it.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import factory

DATA = Path(__file__).resolve().parent.parent / "data"
OUT = Path("demo-out")

IMPORTS = [
    ("seed_tasks.jsonl", {"source": "seeds"}),
    ("chats_sharegpt.json", {"source": "chats"}),
    ("support_openai.jsonl", {"source": "support"}),
    ("glossary.csv", {"source": "glossary", "domain": "glossary"}),
    (
        "preferences.parquet",
        {"source": "prefs", "format": "preference", "map": "prompt=question,chosen=good,rejected=bad"},
    ),
    (
        "nli_pairs.jsonl",
        {"source": "nli", "templates": str(DATA / "templates" / "nli.yaml"), "template_mode": "all"},
    ),
]


def _frame_table(frame, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in frame.columns:
        table.add_column(column)
    for row in frame.iter_rows():
        table.add_row(*("" if v is None else str(v) for v in row))
    return table


def main(out: Path = OUT) -> None:
    console = Console(highlight=False)
    started = time.time()
    if out.exists():
        shutil.rmtree(out)
    wh = factory.init(out / "warehouse")
    imports = Table(title="1. import", title_justify="left")
    for column in ("file", "format", "read", "new", "already there"):
        imports.add_column(column)
    for name, options in IMPORTS:
        summary = factory.import_file(wh, str(DATA / name), **options)
        imports.add_row(
            name, summary.format, str(summary.offered), str(summary.inserted), str(summary.duplicates)
        )
    again = factory.import_file(wh, str(DATA / "seed_tasks.jsonl"), source="seeds")
    imports.add_row(
        "seed_tasks.jsonl (again)",
        again.format,
        str(again.offered),
        str(again.inserted),
        str(again.duplicates),
    )
    console.print(imports)

    base = wh.create_snapshot("base", message="everything imported")
    short = wh.create_snapshot(
        "short",
        parent="base",
        where="length(output) < 200 AND kind <> 'preference'",
        message="short answers for a first SFT run",
    )
    prefs = wh.create_snapshot("prefs", parent="base", where="kind = 'preference'", message="DPO pairs")
    console.print(
        f"[bold]2. snapshots[/]  base {base['row_count']} rows ({base['digest'][:12]}), "
        f"short {short['row_count']} rows, prefs {prefs['row_count']} rows"
    )

    by_source = wh.sql(
        "SELECT source, generator, kind, count(*) AS rows FROM rows GROUP BY ALL ORDER BY rows DESC"
    )
    console.print(
        _frame_table(by_source, "3. SQL: SELECT source, generator, kind, count(*) FROM rows GROUP BY ALL")
    )
    by_domain = wh.sql(
        "SELECT domain, count(*) AS rows, round(avg(length(output))) AS avg_output_chars FROM snapshot('short') "
        "WHERE domain IS NOT NULL GROUP BY domain ORDER BY rows DESC LIMIT 6"
    )
    console.print(_frame_table(by_domain, "   SQL: domains in snapshot('short')"))

    sharegpt = wh.export("short", out / "export-sharegpt", "sharegpt", eval_split=0.05, seed=0)
    llamafactory = wh.export("prefs", out / "export-llamafactory", "llamafactory")
    console.print(
        f"[bold]4. export[/]  short -> sharegpt train {sharegpt['counts']['train']} / eval "
        f"{sharegpt['counts']['eval']} in {out / 'export-sharegpt'}; prefs -> llamafactory "
        f"{llamafactory['counts']['train']} pairs + dataset_info.json in {out / 'export-llamafactory'}"
    )
    diff = wh.diff("base", "short")
    console.print(
        f"[bold]5. diff[/]  base -> short: +{diff['added']['count']} / -{diff['removed']['count']} rows; "
        f"warehouse has {wh.count()} rows in {wh.lake.version()} commits; done in {time.time() - started:.1f} s"
    )
    console.print(
        f"Explore it: [bold]factory sql --warehouse {out / 'warehouse'} \"SELECT * FROM snapshot('short') "
        'LIMIT 3"[/]'
    )
    wh.close()


if __name__ == "__main__":
    main()
