"""Every recipe in recipes/ runs end to end, each step producing rows, on a scripted teacher and the tiny model.

The recipes' defaults use the embedded teacher and Gemma, which run anywhere but take
minutes; here their variables point at a real local OpenAI-compatible server answering
every prompt in the shape it asks for (tests/teachers.py) and at the tiny model built
in-process, and their outputs at a temporary folder. A rerun is then up to date.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from factory.recipes import runner, spec
from tests.servers import ScriptedServer
from tests.teachers import recipe_teacher

RECIPES = sorted((Path(__file__).resolve().parents[3] / "recipes").glob("*.yaml"))


@pytest.fixture(scope="module")
def teacher():
    with ScriptedServer(recipe_teacher, vary_choices=True) as server:
        yield server


def test_every_paper_recipe_is_shipped():
    assert {p.stem for p in RECIPES} >= {"demo", "alpaca", "wizardlm", "alpagasus", "lima", "mosaic", "rlaif"}


@pytest.mark.slow
@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_a_shipped_recipe_runs_and_every_step_makes_rows(path, teacher, tiny_model, tmp_path):
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# "), "a recipe opens with a comment block: what it follows, what to change"
    assert "For a real" in text.split("\nname:")[0]
    variables = spec.load(path).variables
    given = {
        "out": str(tmp_path / "out"),
        "teacher": f"openai:s@{teacher.url}",
        "judge": f"openai:j@{teacher.url}",
        "model": str(tiny_model),
        "tokenizer": str(tiny_model),
    }
    overrides = {f"vars.{k}": v for k, v in given.items() if k in variables}
    assert "vars.out" in overrides, "a recipe writes under ${vars.out}, so a test can move it"
    outcome = runner.run(path, overrides)
    assert outcome.warehouse == str(tmp_path / "out" / "warehouse")
    assert outcome.ran == [s.name for s in outcome.steps]
    for step in outcome.steps:
        assert step.rows and step.rows > 0, (path.name, step)
    again = runner.run(path, overrides)
    assert again.ran == []
