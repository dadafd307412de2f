"""`factory run RECIPE.yaml`: checked before it runs, each step run once, a killed run continued.

The recipe here is shaped like a real one: two imported files (templated tasks with exact
and near copies, and scraped questions), a distillation through a real local
OpenAI-compatible server, two dedup filters, a snapshot, a narrower one, an export.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import factory
from factory.recipes import runner
from factory.recipes.spec import RecipeError
from tests.conftest import write_jsonl
from tests.servers import ScriptedServer

TEMPLATES = [
    "Summarise the review of {p} in one sentence.",
    "In one sentence, what does the review of {p} say?",
    "Give a one-line summary of the review of {p}.",
]
PRODUCTS = ["the kettle", "the blender", "the desk lamp", "the backpack", "the headphones", "the bike lock"]


def _data(folder: Path) -> tuple[Path, Path]:
    tasks = []
    for k, product in enumerate(PRODUCTS):
        review = f"I bought {product} in spring. " + "It works well and was easy to set up. " * (1 + k % 3)
        for template in TEMPLATES:
            tasks.append(
                {"instruction": template.format(p=product), "input": review, "output": f"{product} works."}
            )
    tasks.append(dict(tasks[0]))  # an exact copy
    tasks.append({**tasks[1], "input": tasks[1]["input"] + " Really."})  # a near copy
    questions = [
        {"instruction": f"How do I clean {p}?", "input": "", "output": "See the manual."} for p in PRODUCTS
    ]
    return write_jsonl(folder / "tasks.jsonl", tasks), write_jsonl(folder / "questions.jsonl", questions)


RECIPE = """\
name: test-recipe
vars:
  teacher: "openai:s@{url}"
  threshold: 0.7
steps:
  - name: tasks
    import: {{path: data/tasks.jsonl, source: reviews}}
  - name: questions
    import: {{path: data/questions.jsonl, source: questions, on_error: skip}}
  - name: question-set
    snapshot: {{where: "source = 'questions'", honour_verdicts: false}}
  - name: answers
    generate: distill
    with:
      on: question-set
      teacher.teacher: ${{vars.teacher}}
      sampling.max_tokens: 32
  - name: exact
    filter: exact
  - name: minhash
    filter: minhash
    with: {{threshold: "${{vars.threshold}}"}}
  - name: base
    snapshot: {{message: every kept row}}
  - name: short
    snapshot: {{parent: base, where: "length(output) < 200"}}
  - name: sharegpt
    export: {{snapshot: short, out: out/sharegpt, format: sharegpt, eval_split: 0.2}}
"""


def _teacher(prompt: str) -> str:
    return f"Rinse it with warm water, then dry it. ({len(prompt)})"


@pytest.fixture
def server():
    with ScriptedServer(_teacher) as s:
        yield s


def _recipe(folder: Path, server: ScriptedServer, text: str = RECIPE) -> Path:
    (folder / "data").mkdir(exist_ok=True)
    _data(folder / "data")
    path = folder / "recipe.yaml"
    path.write_text(text.format(url=server.url), encoding="utf-8")
    return path


def _state(warehouse: Path) -> dict:
    """What a finished run leaves: each logical snapshot's digest, and the teacher calls stored."""
    with factory.open(str(warehouse), read_only=True) as wh:
        snaps = wh.sql(
            "SELECT s.name, s.digest, t.step FROM snapshots s JOIN recipe_steps t ON t.identity = s.recipe_step "
            "ORDER BY s.created_at"
        )
        return {
            "snapshots": {step: digest for _, digest, step in snaps.iter_rows()},
            "llm_calls": wh.count("llm_calls"),
            "rows": wh.count(),
        }


def test_run_then_rerun_commits_nothing_and_asks_the_teacher_nothing(tmp_path, server):
    path = _recipe(tmp_path, server)
    warehouse = tmp_path / "wh"
    planned = runner.dry_run(path, warehouse=str(warehouse))
    assert [s.why for s in planned.steps] == ["runs: first time in this warehouse"] * 9
    assert not warehouse.exists()  # a dry run writes nothing, not even a new warehouse

    outcome = runner.run(path, warehouse=str(warehouse))
    assert outcome.ran == [s.name for s in outcome.steps]
    for step in outcome.steps:  # every step produced, kept or selected rows
        assert step.rows and step.rows > 0, step
    asked = server.requests
    assert asked == len(PRODUCTS)
    with factory.open(str(warehouse)) as wh:
        version = wh.lake.version()
        made = wh.show_snapshot("short")["recipe"]
        assert (made["recipe"], made["step"]) == ("test-recipe", "short")
        assert "length(output) < 200" in made["config"]
        stored = wh.sql("SELECT text FROM recipes")["text"].to_list()
        assert stored == [path.read_text()]
        tagged = wh.sql("SELECT count(*) AS n FROM jobs WHERE recipe_step IS NULL AND status = 'succeeded'")
        assert tagged["n"][0] == 0  # every job the recipe ran says which step ran it
    manifest = json.loads((tmp_path / "out" / "sharegpt" / "export.json").read_text())
    assert manifest["counts"]["train"] + manifest["counts"]["eval"] == outcome.steps[-1].rows

    again = runner.run(path, warehouse=str(warehouse))
    assert again.ran == [] and all(s.why.startswith("up to date") for s in again.steps)
    assert server.requests == asked
    with factory.open(str(warehouse)) as wh:
        assert wh.lake.version() == version  # nothing was committed


def test_a_changed_threshold_runs_that_filter_and_what_reads_it(tmp_path, server):
    path = _recipe(tmp_path, server)
    warehouse = str(tmp_path / "wh")
    first = runner.run(path, warehouse=warehouse)
    asked = server.requests
    plan = runner.dry_run(path, {"vars.threshold": 0.9}, warehouse)
    why = {s.name: s.why for s in plan.steps}
    assert why["minhash"] == "runs: threshold 0.7 -> 0.9"
    assert why["base"].startswith("runs: minhash")

    second = runner.run(path, {"vars.threshold": 0.9}, warehouse)
    assert second.ran == ["minhash", "base", "short", "sharegpt"]
    assert server.requests == asked  # the teacher step was up to date
    names = {s.name: s.output.get("snapshot") for s in second.steps if s.verb == "snapshot"}
    assert names == {"question-set": "question-set", "base": "base.2", "short": "short.2"}
    with factory.open(warehouse) as wh:
        assert wh.show_snapshot("short.2")["snapshot"]["parent"] == "base.2"
    manifest = json.loads((tmp_path / "out" / "sharegpt" / "export.json").read_text())
    assert manifest["snapshot"] == "short.2"
    assert first.steps[-1].output == second.steps[-1].output


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("filter: minhash", "filter: minhsh"), r"recipe\.yaml:21: filter: no filter plugin named 'minhsh'"),
        (("{threshold:", "{treshold:"), r"recipe\.yaml:22: with: unknown setting 'treshold'"),
        (("0.7", "high"), r"recipe\.yaml:22: with\.threshold: Input should be a valid number"),
        (
            ("parent: base", "parent: bsae"),
            r"recipe\.yaml:26: snapshot\.parent: snapshot 'bsae' is made by no",
        ),
        (
            ("${{vars.threshold}}", "${{vars.thresh}}"),
            r"recipe\.yaml:22: with\.threshold: \$\{vars\.thresh\}: no",
        ),
        (
            ("- name: questions", "- name: tasks"),
            r"recipe\.yaml:8: name: a step named 'tasks' is already on line 6",
        ),
        (("    export:", "    exprt:"), r"recipe\.yaml:28: exprt: unknown key"),
        (
            ("    snapshot: {{message", "    where: x\n    snapshot: {{message"),
            r"recipe\.yaml:24: where: unknown key",
        ),
        (
            ("sampling.max_tokens: 32", "sampling.max_tokens: 32\n      sampling.max_tokens: 8"),
            r"recipe\.yaml:18: "
            r"'sampling\.max_tokens' is given twice \(first on line 17\)",
        ),
        (("steps:", "steps: ["), r"recipe\.yaml:\d+: not valid YAML"),
    ],
)
def test_a_bad_recipe_is_named_by_file_line_and_key_before_anything_runs(tmp_path, server, edit, message):
    path = _recipe(tmp_path, server, RECIPE.replace(*edit, 1))
    warehouse = tmp_path / "wh"
    with pytest.raises(RecipeError, match=message):
        runner.run(path, warehouse=str(warehouse))
    assert server.requests == 0
    assert not warehouse.exists()  # a recipe that cannot run creates nothing


def test_set_only_sets_variables_the_recipe_has(tmp_path, server):
    path = _recipe(tmp_path, server)
    with pytest.raises(
        RecipeError,
        match=r"--set vars\.nope: .* has no variable 'nope' \(its variables: teacher, threshold\)",
    ):
        runner.dry_run(path, {"vars.nope": 1}, str(tmp_path / "wh"))
    with pytest.raises(RecipeError, match=r"--set steps\.minhash: only variables can be set"):
        runner.dry_run(path, {"steps.minhash": 1}, str(tmp_path / "wh"))


def _factory_run(path: Path, warehouse: Path, crash: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FACTORY_CRASH_AT"}
    if crash:
        env["FACTORY_CRASH_AT"] = crash
    command = [sys.executable, "-m", "factory.cli", "run", str(path), "--warehouse", str(warehouse)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


CRASH_POINTS = [
    "import.staged",  # the first import's rows staged, not committed
    "teacher.call:3",  # three answers journaled, the distillation not committed
    "filter.judged:2",  # minhash's verdicts computed, not committed
    "lake.commit:9",  # inside a commit, just before COMMIT
    "recipe.step:7",  # snapshot base made, short not started
]


@pytest.mark.slow
def test_killed_anywhere_a_rerun_ends_as_an_uninterrupted_run(tmp_path, server):
    path = _recipe(tmp_path, server)
    whole = _factory_run(path, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    expected = _state(tmp_path / "whole")
    assert len(expected["snapshots"]) == 3 and expected["llm_calls"] == len(PRODUCTS)
    for point in CRASH_POINTS:
        warehouse = tmp_path / re.sub(r"\W", "-", point)
        killed = _factory_run(path, warehouse, crash=point)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stdout, killed.stderr)
        rerun = _factory_run(path, warehouse)
        assert rerun.returncode == 0, (point, rerun.stderr)
        assert "up to date" in rerun.stdout or point == "import.staged", (point, rerun.stdout)
        assert _state(warehouse) == expected, point
        with factory.open(str(warehouse), read_only=True) as wh:
            version = wh.lake.version()
        asked = server.requests
        finished = _factory_run(path, warehouse)
        assert "nothing was written" in finished.stdout, (point, finished.stdout)
        assert server.requests == asked
        with factory.open(str(warehouse), read_only=True) as wh:
            assert wh.lake.version() == version


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    levels = ["  a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] + [
        f"  a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 10)}]" for k in range(1, 9)
    ]  # 10**9 values once expanded
    path = tmp_path / "bomb.yaml"
    path.write_text("vars:\n" + "\n".join(levels) + "\nsteps:\n  - {name: x, import: {path: '${vars.a8}'}}\n")
    with pytest.raises(RecipeError, match=r"bomb\.yaml:\d+: YAML aliases \(\*name\) are not read in recipes"):
        runner.dry_run(path, warehouse=str(tmp_path / "wh"))


def test_renaming_a_step_reruns_nothing_and_an_edited_file_says_its_old_rows_stay(tmp_path, server):
    path = _recipe(tmp_path, server)
    warehouse = str(tmp_path / "wh")
    runner.run(path, warehouse=warehouse)
    path.write_text(path.read_text().replace("- name: exact", "- name: exact-copies"))
    assert runner.run(path, warehouse=warehouse).ran == []  # an identity does not hold the step's name
    tasks = tmp_path / "data" / "tasks.jsonl"
    tasks.write_text(tasks.read_text().replace("the kettle", "the teapot"))
    plan = runner.dry_run(path, warehouse=warehouse)
    assert {s.name: s.why for s in plan.steps}["tasks"] == f"runs: {tasks} changed"
    asked = server.requests
    outcome = runner.run(path, warehouse=warehouse)
    assert "earlier version stay in the warehouse" in outcome.steps[0].said
    assert outcome.ran[0] == "tasks" and "questions" not in outcome.ran
    assert server.requests == asked  # the steps after it ran again, the teacher's answers came from the cache


def test_two_steps_may_not_write_one_place_and_a_truncated_export_is_written_again(tmp_path, server):
    twice = RECIPE + "  - name: again\n    export: {{snapshot: base, out: out/sharegpt, format: alpaca}}\n"
    with pytest.raises(
        RecipeError, match=r"recipe\.yaml:30: export\.out: .*out/sharegpt is written by step 'sharegpt' too"
    ):
        runner.dry_run(_recipe(tmp_path, server, twice), warehouse=str(tmp_path / "wh"))
    path = _recipe(tmp_path, server)
    runner.run(path, warehouse=str(tmp_path / "wh"))
    (tmp_path / "out" / "sharegpt" / "train.json").write_text("[]")
    assert runner.run(path, warehouse=str(tmp_path / "wh")).ran == ["sharegpt"]


@pytest.mark.slow
def test_two_processes_running_one_recipe_take_turns(tmp_path, server):
    path = _recipe(tmp_path, server)
    warehouse = tmp_path / "wh"
    command = [sys.executable, "-m", "factory.cli", "run", str(path), "--warehouse", str(warehouse)]
    racers = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [r.communicate(timeout=300) for r in racers]
    assert [r.returncode for r in racers] == [0, 0], outputs
    assert any("nothing was written" in out for out, _ in outputs)  # the second found it all done
    with factory.open(str(warehouse), read_only=True) as wh:
        assert wh.sql("SELECT name FROM snapshots ORDER BY name")["name"].to_list() == [
            "base",
            "question-set",
            "short",
        ]
        assert wh.sql("SELECT count(*) AS n FROM jobs WHERE kind = 'import'")["n"][0] == 2
    assert server.requests == len(PRODUCTS)


LOOP = """\
name: data-efficiency
vars:
  teacher: "openai:s@{url}"
  model: {model}
steps:
  - name: pool
    import: {{path: data/pool.jsonl, source: pool}}
  - name: pool-set
    snapshot: {{where: "source = 'pool'", honour_verdicts: false}}
  - name: sample
    filter: select
    on: pool-set
    with: {{fraction: 0.5, strategy: stratified, stratify_by: domain}}
  - name: sampled
    snapshot: {{parent: pool-set}}
  - name: copies
    generate: augment
    with: {{on: sampled, operators: [dropout], p: 0.3}}
  - name: train-set
    snapshot: {{honour_verdicts: false, where: "generator = 'augment' OR id IN (SELECT id FROM snapshot('sampled'))"}}
  - name: sft
    train: sft
    on: train-set
    with: {{model: "${{vars.model}}", method: lora, max_steps: 4, batch_size: 4, eval_split: 0.3,
            mix: {{chat: 1, code: 1}}, curriculum: length, domain_alpha: 0.5}}
  - name: focused
    generate: distill
    with: {{file: {data}/prompts.jsonl, limit: 6, focus_from: "${{steps.sft.run}}", test_set: {data}/test.jsonl,
            teacher.teacher: "${{vars.teacher}}", sampling.max_tokens: 32}}
"""


def test_the_data_efficiency_loop_runs_from_a_recipe(tmp_path, server, tiny_model):
    """Sampling, augmentation, mixing with eq. 10 and a curriculum, and a focused round that reads the
    recipe's own training run: every method is configurable from a recipe, and a rerun does nothing."""
    (tmp_path / "data").mkdir()
    domains = ["chat", "code"]
    write_jsonl(tmp_path / "data/pool.jsonl", [
        {"instruction": f"Explain item {k} of the {domains[k % 2]} list in a few words please",
         "output": f"Item {k} is " + "short and " * (k % 4) + "fine.", "domain": domains[k % 2]} for k in range(40)])  # fmt: skip
    write_jsonl(tmp_path / "data/prompts.jsonl", [
        {"instruction": f"Describe thing {k} of the {domains[k % 2]} kind", "domain": domains[k % 2]}
        for k in range(12)])  # fmt: skip
    write_jsonl(tmp_path / "data/test.jsonl", [{"instruction": "Say hello", "output": "hello"}])
    path = tmp_path / "loop.yaml"
    path.write_text(LOOP.format(url=server.url, model=tiny_model, data=tmp_path / "data"), encoding="utf-8")
    outcome = runner.run(path)
    assert outcome.ran == [s.name for s in outcome.steps]
    with factory.open(outcome.warehouse, read_only=True) as wh:
        train = wh.sql("SELECT id, metrics FROM runs WHERE trainer = 'sft'").row(0, named=True)
        order = json.loads(train["metrics"])["train"]["order"]
        assert order["mix"] == {"chat": 1, "code": 1} and order["curriculum"] == "length"
        focus = json.loads(wh.sql("SELECT config FROM jobs WHERE plugin = 'distill'")["config"][0])["focus"]
        assert focus["run"] == train["id"] and set(focus["used"]) == {"chat", "code"}
        assert wh.sql("SELECT count(*) AS n FROM rows WHERE generator = 'augment'")["n"][0] > 0
    assert runner.run(path).ran == []
