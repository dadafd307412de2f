"""`factory report` and the hf dataset card, on a warehouse a recipe made (scripted teacher, tiny model).

The HTML page is opened in Debian's headless Chromium (driven by Selenium): every chart
drew its SVG, the page logged no JavaScript error, and the numbers it shows equal SQL
counts. A screenshot is saved in test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

import factory
from factory.recipes import runner
from factory.reports import report
from tests.conftest import write_jsonl
from tests.servers import ScriptedServer
from tests.teachers import recipe_teacher

ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts"
HOSTILE = "</script><img src=x onerror=alert(1)>"  # a source name: shown as text, never run

RECIPE = """\
name: report-test
warehouse: "{out}/warehouse"
steps:
  - name: tasks
    import: {{path: data/tasks.jsonl, source: reviews}}
  - name: odd
    import: {{path: data/odd.jsonl, source: "{hostile}"}}
  - name: questions
    import: {{path: data/questions.jsonl, source: questions}}
  - name: asked
    snapshot: {{where: "source = 'questions'", honour_verdicts: false}}
  - name: answers
    generate: distill
    with: {{on: asked, teacher.teacher: "openai:s@{url}", sampling.max_tokens: 32}}
  - {{name: exact, filter: exact}}
  - {{name: minhash, filter: minhash}}
  - name: heuristics
    filter: heuristics
  - name: base
    snapshot: {{message: every kept row}}
  - name: sft
    train: sft
    on: base
    with: {{model: "{model}", method: lora, max_steps: 4, batch_size: 4, max_length: 128, eval_split: 0.2}}
    evaluate: {{eval_split: 0.2, max_new_tokens: 8, limit: 4}}
"""


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_model):
    """A warehouse with imports, a distillation, dedup, a snapshot and a run on it."""
    folder = tmp_path_factory.mktemp("report")
    data = folder / "data"
    data.mkdir()
    tasks = [
        {"instruction": f"Summarise the review of product {k % 12}.", "input": f"Review {k % 12}: it works well.",
         "output": f"Product {k % 12} works well" + "." * (k % 3), "domain": ["writing", "math", "coding"][k % 3],
         "license": "cc-by-4.0"}
        for k in range(40)
    ]  # fmt: skip
    write_jsonl(data / "tasks.jsonl", tasks)
    write_jsonl(
        data / "odd.jsonl", [{"instruction": "Say <b>hi</b> & bye", "output": "hi & bye", "license": "mit"}]
    )
    write_jsonl(data / "questions.jsonl", [{"instruction": f"How do I fix {t}?", "output": "See the manual."}
                                           for t in ("a kettle", "a lamp", "a bike")])  # fmt: skip
    with ScriptedServer(recipe_teacher) as server:
        text = RECIPE.format(out=folder / "out", url=server.url, model=tiny_model, hostile=HOSTILE)
        (folder / "recipe.yaml").write_text(text)
        outcome = runner.run(folder / "recipe.yaml")
    assert all(s.rows for s in outcome.steps)
    return Path(outcome.warehouse), tiny_model


def test_the_json_report_equals_sql(made, tmp_path):
    warehouse, tiny = made
    with factory.open(str(warehouse), read_only=True) as wh:
        facts = report.write(wh, "base", tmp_path / "r.json", "json", compare="asked", tokenizer=str(tiny))
        written = json.loads((tmp_path / "r.json").read_text())
        assert written["snapshot"]["digest"] == facts["snapshot"]["digest"]
        by_source = dict(wh.sql("SELECT source, count(*) FROM snapshot('base') GROUP BY ALL").iter_rows())
        assert {c["value"]: c["rows"] for c in written["counts"]["source"]} == by_source
        version = facts["snapshot"]["lake_version"]
        everything = wh.sql(f"SELECT count(DISTINCT id) AS n FROM rows AT (VERSION => {version})")["n"][0]
        funnel = written["funnel"]
        assert funnel["start"] == everything and funnel["selected"] == facts["snapshot"]["row_count"]
        assert [f["filter"] for f in funnel["filters"]] == [
            "exact",
            "minhash",
            "heuristics",
        ]  # the order they ran
        dropped = sum(f["dropped"] for f in funnel["filters"])
        assert funnel["filters"][-1]["remaining"] == everything - dropped
        rejected = wh.sql(
            "SELECT count(DISTINCT id) AS n FROM verdicts WHERE NOT keep AND filter IN ('exact', 'minhash', 'heuristics')"
        )["n"][0]
        assert dropped == rejected  # each dropped row counted once, by the first filter that dropped it
        for f in funnel["filters"]:
            assert sum(r["rows"] for r in f["reasons"]) == f["dropped"]
            assert all(0 < len(r["examples"]) <= 3 for r in f["reasons"])
        exact = next(c for c in written["clusters"] if c["filter"] == "exact")
        assert exact["rows_in_clusters"] == sum(s["size"] * s["clusters"] for s in exact["sizes"])
        calls = wh.sql("SELECT count(*) AS n FROM llm_calls")["n"][0]
        assert sum(t["calls"] for t in written["teacher"]) == calls == 3
        assert [r["trainer"] for r in written["runs"]] == ["sft"] and written["runs"][0]["after"]["loss"] > 0
        assert (
            written["lengths"]["instruction"]["max"] > 0
            and sum(written["lengths"]["output"]["counts"]) == facts["snapshot"]["row_count"]
        )
        assert written["compare"]["other"] == "asked" and written["compare"]["added"] > 0
        assert {x["license"] for x in written["licenses"]} == {"cc-by-4.0", "mit"}


def _browser():
    from selenium import webdriver

    for program in ("chromium", "chromedriver"):
        assert shutil.which(program), (
            f"{program} is missing: `make test` installs Debian's chromium and chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(
        options=options, service=webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    )


@pytest.mark.slow
def test_the_html_report_renders_in_chromium_with_the_sql_numbers(made, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    warehouse, tiny = made
    page = tmp_path / "report.html"
    with factory.open(str(warehouse), read_only=True) as wh:
        report.write(wh, "base", page, compare="asked", tokenizer=str(tiny))
        rows = wh.sql("SELECT count(*) AS n FROM snapshot('base')")["n"][0]
        by_source = dict(wh.sql("SELECT source, count(*) FROM snapshot('base') GROUP BY ALL").iter_rows())
    assert "<script src=" not in page.read_text()  # plotly.js is inlined
    browser = _browser()
    try:
        browser.get(page.as_uri())
        charts = browser.find_elements(By.CSS_SELECTOR, "div.chart")
        assert len(charts) >= 10
        WebDriverWait(browser, 30).until(
            lambda b: all(
                c.find_elements(By.CSS_SELECTOR, "svg.main-svg")
                for c in b.find_elements(By.CSS_SELECTOR, "div.chart")
            )
        )
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert [u for u in fetched if not u.startswith(("file:", "data:", "blob:"))] == []  # opens offline
        assert browser.find_element(By.ID, "kpi-rows").text == f"{rows:,}"
        browser.execute_script("document.querySelectorAll('details').forEach(d => d.open = true)")
        shown = {
            tr.find_elements(By.TAG_NAME, "td")[0].text: int(
                tr.find_elements(By.TAG_NAME, "td")[1].text.replace(",", "")
            )
            for tr in browser.find_elements(By.CSS_SELECTOR, "#table-by-source tbody tr")
        }
        assert shown == by_source and HOSTILE in shown  # the hostile name is text on the page
        ARTIFACTS.mkdir(exist_ok=True)
        height = browser.execute_script("return document.body.scrollHeight")
        browser.set_window_size(1280, min(height, 16000))
        browser.save_screenshot(str(ARTIFACTS / "report.png"))
    finally:
        browser.quit()


def test_the_hf_card_states_the_license_given_or_recorded_never_a_default(made, tmp_path):
    warehouse, _ = made
    with factory.open(str(warehouse), read_only=True) as wh:
        factory.export(wh, "base", tmp_path / "given", "hf", eval_split=0.2, license="apache-2.0")
        factory.export(wh, "base", tmp_path / "mixed", "hf", eval_split=0.2)
        factory.export(wh, "asked", tmp_path / "none", "hf")
        rows = wh.sql("SELECT count(*) AS n FROM snapshot('base')")["n"][0]

    def header(folder: Path) -> dict:
        return yaml.safe_load((folder / "README.md").read_text().split("---\n")[1])

    given = header(tmp_path / "given")
    assert given["license"] == "apache-2.0" and given["size_categories"] == ["n<1K"]
    assert [f["split"] for f in given["configs"][0]["data_files"]] == ["train", "test"]
    assert "license" not in header(tmp_path / "mixed")  # the sources state two licenses
    assert "cc-by-4.0" in (tmp_path / "mixed" / "README.md").read_text()
    assert "license" not in header(tmp_path / "none")
    assert "License: not stated" in (tmp_path / "none" / "README.md").read_text()

    from datasets import load_dataset

    loaded = load_dataset(str(tmp_path / "given"))
    assert set(loaded) == {"train", "test"} and loaded["train"].num_rows + loaded["test"].num_rows == rows


def test_runs_on_one_snapshot_are_shown_side_by_side(wh, tmp_path, tiny_model):
    """Several evaluations of one held-out set (seeds, training sets) in one table and one chart,
    each with the model it scored and its instructions-followed share."""
    from factory.evaluation.metrics import EvalSettings
    from factory.runners import training

    rows = [{"instruction": f"Answer {k} in all lowercase letters.", "output": f"answer {k}",
             "domain": ["math", "chat"][k % 2]} for k in range(6)]  # fmt: skip
    factory.import_file(wh, str(write_jsonl(tmp_path / "test.jsonl", rows)))
    wh.create_snapshot("test")
    settings = EvalSettings(split="all", max_new_tokens=4)
    runs = [training.evaluate_run(wh, str(tiny_model), "test", settings.model_copy(update={"seed": seed}))["id"]
            for seed in range(2)]  # fmt: skip
    facts = report.write(wh, "test", tmp_path / "r.json", "json", tokenizer=str(tiny_model))
    assert [r["model"] for r in facts["runs"]] == [str(tiny_model)] * 2
    assert all(r["after"]["instructions_followed"] is not None for r in facts["runs"])
    report.write(wh, "test", tmp_path / "r.html", "html", tokenizer=str(tiny_model))
    page = (tmp_path / "r.html").read_text()
    table = page[page.index('id="table-runs"') :].split("</table>")[0]
    assert all(run in table for run in runs) and "instructions_followed" in table
    assert "seed=0, split=all" in table and "seed=1, split=all" in table  # what tells them apart
    assert "held-out loss per domain, every run" in page
