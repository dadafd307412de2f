"""Input written by a careless or hostile person: templates that try to run code, output paths
that point into the warehouse or over existing files, a crash mid-commit, a full disk, a crafted
checkpoint. Each is refused or survived with a clear message, and the warehouse stays whole."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import factory
from bench.synth import write_alpaca_jsonl
from factory.formats.readers import ReadError
from tests.conftest import alpaca, fingerprint, write_jsonl

FACTORY = [sys.executable, "-m", "factory.cli"]


def run(*args: str, ok: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([*FACTORY, *args], capture_output=True, text=True, cwd=cwd)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_templates_cannot_run_code_or_exhaust_memory(wh, tmp_path):
    marker = tmp_path / "pwned"
    task = tmp_path / "task.yaml"
    task.write_text(
        textwrap.dedent(
            f"""
            task: hostile
            templates:
              - name: shell
                instruction: "{{{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}}}"
                output: "x"
              - name: subclasses
                instruction: "{{{{ ''.__class__.__mro__[1].__subclasses__() }}}}"
                output: "x"
              - name: mutate
                instruction: "{{{{ q }}}}{{% set _ = names.append('x') %}}"
                output: "x"
              - name: bomb
                instruction: "{{{{ 'a' * 100000000 }}}}"
                output: "x"
              - name: power
                instruction: "{{{{ 10 ** 100000000 }}}}"
                output: "x"
              - name: percent
                instruction: "{{{{ ('%100000000s' % q)|replace(' ', 'z') }}}}"
                output: "x"
              - name: format_width
                instruction: "{{{{ '{{:>1000000000}}'.format('x') }}}}"
                output: "x"
              - name: format_width_argument
                instruction: "{{{{ '{{:>{{w}}}}'.format('x', w=1000000000) }}}}"
                output: "x"
              - name: ljust
                instruction: "{{{{ q.ljust(1000000000) }}}}"
                output: "x"
              - name: center
                instruction: "{{{{ q|center(1000000000000) }}}}"
                output: "x"
              - name: replace_grows
                instruction: "{{{{ ('a' * 1000000).replace('a', 'aaaaaaaaaa') }}}}"
                output: "x"
              - name: join
                instruction: "{{{{ range(100000)|join(q * 20) }}}}"
                output: "x"
              - name: long_output
                instruction: "{{% for i in range(100000) %}}{{{{ q }}}} and more words{{% endfor %}}"
                output: "x"
              - name: slow
                instruction: "{{% for i in range(100000) %}}{{% for j in range(100000) %}}{{% endfor %}}{{% endfor %}}"
                output: "x"
              - name: accumulate
                instruction: "{{% set ns = namespace(s='a') %}}{{{{ ns.s }}}}"
                output: "x"
              - name: fine
                instruction: "{{{{ q }}}}"
                output: "{{{{ a }}}}"
            """
        )
    )
    data = write_jsonl(tmp_path / "d.jsonl", [{"q": "hi", "a": "yo", "names": ["a"]}])
    summary = factory.import_file(
        wh,
        str(data),
        templates=str(task),
        template_mode="all",
        on_error="skip",
        rejects=str(tmp_path / "r.csv"),
    )
    assert not marker.exists()
    assert summary.inserted == 1 and wh.sql("SELECT instruction, output FROM rows").rows() == [("hi", "yo")]
    rejects = (tmp_path / "r.csv").read_text()
    names = ["shell", "subclasses", "mutate", "bomb", "power", "percent", "format_width", "format_width_argument",
             "ljust", "center", "replace_grows", "join", "long_output", "slow", "accumulate"]  # fmt: skip
    for name in names:
        assert f"template '{name}'" in rejects
    assert rejects.count("template_error") == len(names)


def test_output_paths_never_land_in_the_warehouse_or_over_a_file(tmp_path):
    wh = tmp_path / "wh"
    run("init", "-w", str(wh))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "x", "output": 5}, *alpaca(3)])
    run("import", str(bad), "-w", str(wh), "--on-error", "skip", "--no-progress")
    run("snapshot", "create", "base", "-w", str(wh))
    before = fingerprint(wh)
    for target in ("catalog.sqlite", "factory.json", "data/main/rows/x.csv", "rejects/new.csv"):
        refused = run("import", str(bad), "-w", str(wh), "--on-error", "skip", "--rejects", str(wh / target),
                      "--no-progress", ok=False)  # fmt: skip
        assert refused.returncode == 1 and "inside the warehouse" in refused.stderr, refused.stderr
    for out in (wh, wh / "data", tmp_path / "link"):
        if out.name == "link":
            out.symlink_to(wh)
        refused = run("export", "base", "--format", "openai", "--out", str(out), "-w", str(wh), ok=False)
        assert refused.returncode == 1 and "inside the warehouse" in refused.stderr
    assert fingerprint(wh) == before
    with factory.open(wh, read_only=True) as opened:
        assert opened.count() == 3

    report = tmp_path / "rejects.csv"
    report.write_text("keep me\n")
    again = run("import", str(bad), "-w", str(wh), "--on-error", "skip", "--rejects", str(report), "--no-progress",
                ok=False)  # fmt: skip
    assert again.returncode == 1 and "--force" in again.stderr and report.read_text() == "keep me\n"
    run(
        "import",
        str(bad),
        "-w",
        str(wh),
        "--on-error",
        "skip",
        "--rejects",
        str(report),
        "--force",
        "--no-progress",
    )
    assert "non_string" in report.read_text()

    out = tmp_path / "export"
    run("export", "base", "--format", "openai", "--out", str(out), "-w", str(wh))
    (out / "train.jsonl").write_text("mine\n")
    again = run("export", "base", "--format", "openai", "--out", str(out), "-w", str(wh), ok=False)
    assert again.returncode == 1 and "train.jsonl" in again.stderr and "--force" in again.stderr
    assert (out / "train.jsonl").read_text() == "mine\n"
    run("export", "base", "--format", "openai", "--out", str(out), "-w", str(wh), "--force")
    assert len((out / "train.jsonl").read_text().splitlines()) == 3
    # --force replaces a whole earlier export: an old eval split left beside a new train split
    # would put eval rows in training.
    split = tmp_path / "split"
    run("export", "base", "--format", "sharegpt", "--out", str(split), "--eval-split", "0.5", "-w", str(wh))
    assert (split / "eval.json").exists()
    redo = run("export", "base", "--format", "sharegpt", "--out", str(split), "--force", "-w", str(wh))
    assert "removed the earlier export's eval.json" in redo.stdout
    assert sorted(p.name for p in split.iterdir()) == ["export.json", "train.json"]
    assert len(json.loads((split / "train.json").read_text())) == 3

    # train-config's own files are checked the same way: a symlink to the catalog planted where
    # axolotl's DPO file goes is refused, and an existing file is replaced only with --force.
    prefs = write_jsonl(
        tmp_path / "prefs.jsonl", [{"prompt": f"q{i}", "chosen": "good", "rejected": "bad"} for i in range(6)]
    )
    run("import", str(prefs), "-w", str(wh), "--no-progress")
    run("snapshot", "create", "prefs", "--where", "rejected IS NOT NULL", "-w", str(wh))
    ax = tmp_path / "ax"
    (ax / "data").mkdir(parents=True)
    (ax / "data" / "axolotl-train.jsonl").write_text("precious\n")
    (ax / "data" / "axolotl-eval.jsonl").symlink_to(wh / "catalog.sqlite")
    before = fingerprint(wh)
    args = ["train-config", "axolotl", "prefs", "-w", str(wh), "--out", str(ax), "--set", "stage=dpo",
            "--set", "model=/nonexistent/model", "--set", "eval_split=0.4"]  # fmt: skip
    for extra in ([], ["--force"]):
        refused = run(*args, *extra, ok=False)
        assert refused.returncode == 1 and "inside the warehouse" in refused.stderr
    assert fingerprint(wh) == before
    (ax / "data" / "axolotl-eval.jsonl").unlink()
    refused = run(*args, ok=False)
    assert refused.returncode == 1 and "axolotl-train.jsonl already there" in refused.stderr
    assert (ax / "data" / "axolotl-train.jsonl").read_text() == "precious\n"
    run(*args, "--force")
    assert (ax / "data" / "axolotl-train.jsonl").read_text().count('"chosen"') >= 1


def test_a_link_planted_after_the_check_is_replaced_not_written_through(tmp_path):
    from factory.store import outputs

    catalog = tmp_path / "catalog.sqlite"
    catalog.write_text("the catalog")
    target = tmp_path / "out" / "rejects.csv"

    def plant(link: Path) -> None:  # the race: a link appears between the check and the write
        link.write_text("report")
        target.symlink_to(catalog)

    with pytest.raises(outputs.OutputError, match="the file exists; pass --force"):
        outputs.write_file(target, lambda path: plant(path), [], force=False)
    assert catalog.read_text() == "the catalog" and not list(target.parent.glob(".rejects.csv*"))
    target.unlink()
    outputs.write_file(target, lambda path: plant(path), [], force=True)
    assert catalog.read_text() == "the catalog" and not target.is_symlink() and target.read_text() == "report"


def test_read_only_commands_work_right_after_a_crash_mid_commit(tmp_path):
    wh = tmp_path / "wh"
    with factory.init(wh) as opened:
        factory.import_file(opened, str(write_jsonl(tmp_path / "a.jsonl", alpaca(20))))
    catalog = wh / "catalog.sqlite"
    # A writer killed mid-commit: its changes reached the catalog file, the rollback journal is hot.
    writer = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sqlite3, time
            c = sqlite3.connect({str(catalog)!r}, isolation_level=None)
            c.execute("PRAGMA cache_size = 1")
            c.execute("BEGIN IMMEDIATE")
            c.execute("UPDATE ducklake_snapshot SET schema_version = schema_version + 1000")
            c.execute("CREATE TABLE junk AS WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r "
                      "WHERE i < 100000) SELECT i, randomblob(100) AS b FROM r")
            print("ready", flush=True)
            time.sleep(600)
        """)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert (wh / "catalog.sqlite-journal").stat().st_size > 0
    counted = run("sql", "SELECT count(*) AS n FROM rows", "-w", str(wh), "--format", "csv")
    assert counted.stdout.split() == ["n", "20"]
    run("jobs", "-w", str(wh))
    run("snapshot", "list", "-w", str(wh))
    with factory.open(wh) as opened:  # and writers go on
        assert opened.create_snapshot("after")["row_count"] == 20
        assert opened.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'junk'").item() == 0


def _mount_namespace() -> list[str]:
    """A command prefix that runs in a private mount namespace (as root, or in a user namespace)."""
    for prefix in (["unshare", "--mount"], ["unshare", "--mount", "--map-root-user"]):
        if shutil.which("unshare") and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    pytest.fail(
        "this test needs `unshare --mount` (util-linux, run as root) to give the warehouse a tiny disk"
    )


def test_a_full_disk_commits_nothing_and_says_so(tmp_path):
    big = write_alpaca_jsonl(tmp_path / "big.jsonl", 60_000, seed=1)  # 34 MB of varied text
    disk, wh = tmp_path / "disk", tmp_path / "disk" / "wh"
    disk.mkdir()
    script = textwrap.dedent(f"""
        set -e
        mount -t tmpfs -o size=4M tmpfs {disk}
        {sys.executable} -m factory.cli init -w {wh} > /dev/null
        {sys.executable} -m factory.cli import {big} -w {wh} --no-progress && exit 9 || true
        {sys.executable} -m factory.cli sql "SELECT count(*) AS n FROM rows" -w {wh} --format csv
        {sys.executable} -m factory.cli sql "SELECT status FROM jobs" -w {wh} --format csv
    """)
    proc = subprocess.run([*_mount_namespace(), "sh", "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no space left on device while writing" in proc.stderr and "nothing was committed" in proc.stderr
    assert "ROLLBACK" not in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout.split()[:2] == ["n", "0"]


def test_a_crafted_checkpoint_is_refused_not_unpickled(tmp_path):
    import torch
    from safetensors.torch import save_file

    from trainers._loop import _resume

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    step = tmp_path / "checkpoints" / "step-2"
    step.mkdir(parents=True)
    save_file({n: p.detach().clone() for n, p in model.named_parameters()}, step / "model.safetensors")
    torch.save({"optimizer": Payload(), "scheduler": {}, "rng": torch.get_rng_state()}, step / "state.pt")
    (step / "logs.json").write_text("[]")
    with pytest.raises(ValueError, match="cannot be read safely"):
        _resume(model, optimizer, scheduler, tmp_path / "checkpoints", [])
    assert not marker.exists()


def test_small_json_rules(wh, tmp_path):
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"instruction": "Name a prime", "output": "7"}))
    assert factory.import_file(wh, str(one)).inserted == 1  # one object is one record (README)
    doubled = tmp_path / "doubled.csv"
    doubled.write_text("instruction,output,output\nx,y,z\n")
    with pytest.raises(ReadError, match=r"doubled\.csv:1: the header names 'output' twice"):
        factory.import_file(wh, str(doubled))


@pytest.mark.parametrize("generator", ["augment", "distill", "mosaic"])
def test_a_snapshot_name_is_never_spliced_into_sql(generator, wh, tmp_path):
    """`--on` names a snapshot; text that is not one (here: SQL that would read a file and write
    another) is refused as an unknown snapshot before any query runs."""
    factory.import_file(wh, str(write_jsonl(tmp_path / "rows.jsonl", alpaca(6))))
    wh.create_snapshot("seeds")
    planted = tmp_path / "pwned.csv"
    hostile = (
        f"seeds'); COPY (SELECT 42 AS x) TO '{planted}'; SELECT * FROM snapshot('seeds') UNION ALL "
        "SELECT * FROM read_text('/etc/hostname') --"
    )
    extra = (
        {"limit": 2, "teacher.teacher": "openai:unused@http://127.0.0.1:9/v1"}
        if generator == "distill"
        else {}
    )
    before = wh.count()
    with pytest.raises(factory.errors.FactoryError, match="no snapshot named"):
        factory.generate(wh, generator, on=hostile, **extra)
    assert not planted.exists() and wh.count() == before
