"""`factory plugins NAME` and `factory filter NAME --show-config`: every setting of a plugin with
its type, default (or effective value) and description, before anything runs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import yaml
from pydantic import BaseModel, Field, SecretStr

from factory import plugins
from factory.cli import main
from filters import heuristics, pii

SECRET = "sk-test-0123456789abcdefghij"


def cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stopped:
        main(list(args))
    captured = capsys.readouterr()
    return stopped.value.code or 0, captured.out, captured.err


def cells(out: str) -> dict[str, list[str]]:
    """The table's rows by setting, its header too (output that is not a terminal is never wrapped:
    one line a row)."""
    rows = {}
    for line in out.splitlines():
        if line[:1] in ("│", "┃"):
            row = [c.strip() for c in line.replace("┃", "│").strip("│").split("│")]
            rows[row[0]] = row[1:]
    return rows


@pytest.fixture(autouse=True)
def _nowhere(tmp_path, monkeypatch):
    """No warehouse anywhere: none of these commands may need (or make) one."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FACTORY_WAREHOUSE", str(tmp_path / "wh"))
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    yield
    assert not (tmp_path / "wh").exists() and not (tmp_path / "warehouse").exists()


def test_plugins_name_shows_every_setting_with_type_default_and_description(capsys):
    code, out, err = cli(capsys, "plugins", "pii")
    assert code == 0, err
    assert out.startswith("filter pii (filters.pii): ")
    rows = cells(out)
    assert set(rows) == {"setting", *pii.PiiConfig.model_fields}
    kinds = rows["kinds"]
    # a default_factory list, written as --set reads it
    assert kinds == [f"list[{'|'.join(pii.KINDS)}]", f"[{', '.join(pii.KINDS)}]", "what to look for"]
    assert yaml.safe_load(kinds[1]) == list(pii.KINDS)
    assert rows["action"][:2] == ["redact|drop", "redact"]
    assert yaml.safe_load(rows["allow_domains"][1]) == list(pii.RESERVED_DOMAINS)

    code, out, _ = cli(capsys, "plugins", "heuristics")
    rows = cells(out)
    assert rows["languages"][:2] == ["list[str] | None", "null"]  # None, as YAML writes it
    assert rows["max_repetition"] == [
        "float",
        "0.3",
        "largest share of repeated word 3-grams in the response",
    ]
    assert yaml.safe_load(rows["refusals"][1]) == heuristics.REFUSALS  # quotes and commas inside items


def test_nested_groups_are_dotted_keys_with_the_groups_own_defaults(capsys):
    code, out, err = cli(capsys, "plugins", "judge")
    assert code == 0, err
    rows = cells(out)
    assert rows["teacher"][:2] == ["TeacherConfig", "(group)"]
    assert rows["teacher.options.concurrency"][:2] == ["int", "16"]
    assert rows["sampling.temperature"][:2] == ["float", "0.0"]  # judge's own Sampling, not Sampling()'s 1.0
    assert rows["sampling.stop"][:2] == ["tuple[str, ...]", "[]"]
    # the variable's name is shown, its value (a key in this environment) never is
    assert rows["teacher.options.api_key_env"][:2] == ["str", "OPENAI_API_KEY"]
    assert SECRET not in out


def test_a_name_several_kinds_use_shows_each_or_the_one_asked_for(capsys):
    code, out, _ = cli(capsys, "plugins", "distill")
    assert (
        code == 0
        and "generator distill (generators.distill)" in out
        and "trainer distill (trainers.distill)" in out
    )
    code, out, _ = cli(capsys, "plugins", "distill", "--kind", "trainer")
    assert code == 0 and "trainer distill" in out and "generator distill" not in out
    assert "lora_r" in cells(out)
    code, out, _ = cli(capsys, "plugins", "--kind", "filter")  # the listing, one kind
    assert "heuristics" in out and "trainers.sft" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("plugins", "heuristcs"),
            "no generator, filter or trainer plugin named 'heuristcs'; the plugins are: ",
        ),
        (
            ("plugins", "pii", "--kind", "trainer"),
            "no trainer plugin named 'pii'; the plugins are: distill, dpo, sft",
        ),
        (
            ("plugins", "pii", "--kind", "filters"),
            "--kind must be generator, filter or trainer, not 'filters'",
        ),
        (("filter", "heuristcs", "--show-config"), "no filter plugin named 'heuristcs' (installed: "),
        (("filter", "exact", "--show-config", "--set", "kye=record"), "unknown setting 'kye'"),
        (("filter", "exact", "--show-config", "--set", "key=recrod"), "key: Input should be"),
    ],
)
def test_unknown_names_and_settings_are_one_error_line(capsys, args, message):
    code, out, err = cli(capsys, *args)
    assert code == 1 and out == ""
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    if args[1] == "heuristcs" and args[0] == "plugins":
        assert "heuristics" in err and "pii" in err and "sft" in err and "human" in err


def test_show_config_prints_the_effective_settings_and_runs_nothing(capsys, tmp_path):
    code, out, err = cli(capsys, "filter", "exact", "--show-config", "--set", "key=record")
    assert code == 0, err
    assert out.startswith("filter exact (filters.exact): ") and "effective settings" in out
    rows = cells(out)
    assert rows["setting"] == ["type", "value", "default", "description"]
    assert rows["key"][:3] == ["instruction|instruction_input|record", "record", "instruction_input"]
    assert rows["lowercase"][:3] == ["bool", "true", "true"]
    assert "judged" not in out  # no run summary

    (tmp_path / "h.yaml").write_text("languages: [en, de]\nmax_output_words: 100\nrefusals: []\n")
    code, out, _ = cli(
        capsys, "filter", "heuristics", "--config", "h.yaml", "--set", "max_output_words=50", "--show-config"
    )
    rows = cells(out)
    assert rows["languages"][1:3] == ["[en, de]", "null"]
    assert rows["max_output_words"][1:3] == ["50", "4096"]  # --set over the file
    assert rows["refusals"][1] == "[]" and yaml.safe_load(rows["refusals"][2]) == heuristics.REFUSALS

    code, out, _ = cli(
        capsys,
        "filter",
        "judge",
        "--show-config",
        "--set",
        "teacher.options.concurrency=4",
        "--set",
        'sampling.stop=["\\n"]',
    )
    rows = cells(out)
    assert rows["teacher.options.concurrency"][1:3] == ["4", "16"]
    assert rows["teacher.options.max_retries"][1:3] == ["8", "8"]  # siblings keep their defaults
    assert rows["sampling.stop"][1] == '["\\n"]'  # a newline in a value: escaped, the row stays one line
    assert rows["sampling.temperature"][1:3] == ["0.0", "0.0"]


class Vendor(BaseModel):
    endpoint: str = Field("https://api.example.com", description="where to send")
    api_key: str | None = Field(
        default_factory=lambda: os.environ.get("VENDOR_API_KEY"), description="the vendor's key"
    )
    token: SecretStr | None = Field(None, description="a bearer token")
    note: str = Field(default_factory=lambda: os.environ.get("VENDOR_API_KEY", ""), description="oops")


class Outer(BaseModel):
    vendor: Vendor = Field(default_factory=Vendor)
    max_tokens: int = Field(64, description="not a secret, despite the name")


def test_secret_settings_never_show_a_value(monkeypatch):
    monkeypatch.setenv("VENDOR_API_KEY", "vk-live-abcdefgh12345678")
    rows = {r["setting"]: r for r in plugins.describe_config(Outer)}
    assert rows["vendor.api_key"]["default"] == "[redacted]"  # read from the environment by a default factory
    assert rows["vendor.note"]["default"] == "[redacted]"  # not secret-named, but an environment secret
    assert rows["vendor.token"]["default"] == "null" and rows["vendor.token"]["type"] == "SecretStr | None"
    assert rows["vendor.endpoint"]["default"] == "https://api.example.com"
    assert rows["max_tokens"]["default"] == "64"
    given = Outer(vendor=Vendor(api_key="typed-on-the-command-line", token="t0k3n-value"))
    effective = {r["setting"]: r for r in plugins.describe_config(Outer, given)}
    assert (
        effective["vendor.api_key"]["value"] == "[redacted]"
        and effective["vendor.token"]["value"] == "[redacted]"
    )
    text = repr(plugins.describe_config(Outer, given))
    assert "vk-live" not in text and "typed-on-the-command-line" not in text and "t0k3n" not in text


PACKAGE = """
import os

import polars as pl
from pydantic import BaseModel, Field

from factory.plugins import FilterContext, FilterPlugin


class VendorConfig(BaseModel):
    api_key: str | None = Field(default_factory=lambda: os.environ.get("VENDOR_API_KEY"), description="key")
    threshold: float = Field(0.5, description="lowest score kept")


def run(candidates: pl.DataFrame, kept: pl.DataFrame, config: VendorConfig, ctx: FilterContext | None = None) -> pl.DataFrame:
    raise AssertionError("--show-config must not run the filter")


plugin = FilterPlugin(name="vendor", config=VendorConfig, run=run, summary="a vendor's moderation API")
"""


def test_a_third_party_filters_key_from_the_environment_is_not_printed(tmp_path):
    root = tmp_path / "site"
    (root / "vendorfilter").mkdir(parents=True)
    (root / "vendorfilter" / "__init__.py").write_text(textwrap.dedent(PACKAGE))
    info = root / "vendorfilter-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vendorfilter\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[factory.filters]\nvendor = vendorfilter:plugin\n")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
        "VENDOR_API_KEY": "vk-live-abcdefgh12345678",
        "FACTORY_WAREHOUSE": str(tmp_path / "wh"),
    }
    for args in (["plugins", "vendor"], ["filter", "vendor", "--show-config", "--set", "threshold=0.9"]):
        proc = subprocess.run(
            [sys.executable, "-m", "factory.cli", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        rows = cells(proc.stdout)
        assert rows["api_key"][:2] == ["str | None", "[redacted]"]
        assert "vk-live" not in proc.stdout + proc.stderr
    assert rows["threshold"][:3] == ["float", "0.9", "0.5"]
