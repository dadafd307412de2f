"""The scaling law (survey eq. 23): recovering known constants, the D-needed inverse, the floor,
refusing fits that are not identified, and `factory scaling fit` on runs really trained."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import factory
from factory.errors import FactoryError
from factory.evaluation import scaling
from factory.evaluation.metrics import EvalSettings
from factory.runners import training
from factory.store.sql_guard import QueryRefused
from tests.conftest import alpaca, write_jsonl
from tests.tiny_model import build

CHINCHILLA = scaling.Constants(A=406.4, alpha=0.34, B=410.7, beta=0.28, E=1.69)  # Hoffmann et al. 2022


def synthetic(constants: scaling.Constants, noise: float, seed: int = 0) -> list[scaling.Point]:
    """4 N x 5 D points on the law, each loss times exp(normal(0, noise))."""
    rng = np.random.default_rng(seed)
    return [
        scaling.Point(
            run=f"n{n:.0e}-d{d:.0e}",
            params=n,
            tokens=d,
            loss=constants.loss(n, d) * math.exp(rng.normal(0, noise)),
        )
        for n in np.geomspace(1e7, 1e10, 4)
        for d in np.geomspace(1e8, 1e11, 5)
    ]


def test_exact_points_give_back_the_constants():
    found = scaling.fit(synthetic(CHINCHILLA, 0.0), bootstrap=0).constants
    for name in scaling.NAMES:
        assert getattr(found, name) == pytest.approx(getattr(CHINCHILLA, name), rel=1e-4), name


def test_a_fit_says_what_makes_it_worth_less():
    """Runs that measure different things, and constants the optimiser left at a bound, are named."""
    points = synthetic(CHINCHILLA, 0.0)
    clean = scaling.fit(points, bootstrap=0)
    assert scaling.warnings(points, clean) == []
    mixed = [p.model_copy(update={"method": ["full", "lora"][k % 2], "held_out": f"{8 + k % 2} rows"})
             for k, p in enumerate(points)]  # fmt: skip
    said = " | ".join(scaling.warnings(mixed, clean))
    assert "different methods (full, lora)" in said and "different held-out sets" in said
    flat = [p.model_copy(update={"loss": 2.0 + 1e-9 * k}) for k, p in enumerate(points)]  # nothing to fit
    assert any("at the bound" in w for w in scaling.warnings(flat, scaling.fit(flat, bootstrap=0)))


def test_noisy_points_give_back_the_constants_within_their_bootstrap_spread():
    """0.5% multiplicative noise on 20 points. The tolerances are what that noise allows: moving
    alpha or beta by 0.02 changes the losses over the grid by about 1.5%, three times the noise, and
    A and B trade off against the exponents (a 25% change in B is absorbed by a 0.01 change in beta
    over this range of D), so they are held loosely. The true constants must also lie inside the
    bootstrap's 5-95% intervals, and the fitted law must match the noise-free losses within 1%."""
    points = synthetic(CHINCHILLA, 0.005, seed=1)
    fitted = scaling.fit(points, seed=0, bootstrap=60)
    c = fitted.constants
    assert abs(c.alpha - CHINCHILLA.alpha) < 0.02 and abs(c.beta - CHINCHILLA.beta) < 0.02
    assert pytest.approx(CHINCHILLA.E, rel=0.05) == c.E
    assert pytest.approx(CHINCHILLA.A, rel=0.3) == c.A and pytest.approx(CHINCHILLA.B, rel=0.3) == c.B
    for name in scaling.NAMES:
        spread = fitted.spread[name]
        assert spread.low <= getattr(CHINCHILLA, name) <= spread.high, (name, spread)
        assert spread.std > 0
    assert fitted.bootstrap == 60 and len(fitted.draws) == 60
    assert 0.001 < fitted.rms_log_error < 0.008  # about the noise put in (0.005): no overfit, no misfit
    for p in points:
        assert c.loss(p.params, p.tokens) == pytest.approx(CHINCHILLA.loss(p.params, p.tokens), rel=0.01)
    low, high = scaling.band(fitted, 1e9, 1e12)
    assert low < scaling.predict(c, 1e9, 1e12) < high


def test_tokens_needed_inverts_predict():
    for n in (7e7, 1e9, 7e10):
        for d in (1e9, 1.4e12, 3e13):
            loss = scaling.predict(CHINCHILLA, n, d)
            assert scaling.tokens_needed(CHINCHILLA, n, loss) == pytest.approx(d, rel=1e-6)
    assert scaling.predict(CHINCHILLA, 1e9, scaling.tokens_needed(CHINCHILLA, 1e9, 2.2)) == pytest.approx(2.2)


def test_a_target_at_or_below_the_floor_is_unreachable():
    n = 1e9
    floor = CHINCHILLA.E + CHINCHILLA.A / n**CHINCHILLA.alpha
    assert CHINCHILLA.floor(n) == pytest.approx(floor)
    for target in (floor, floor - 0.01, 1.0):
        with pytest.raises(scaling.Unreachable, match=r"unreachable at N = 1,000,000,000") as caught:
            scaling.tokens_needed(CHINCHILLA, n, target)
        assert caught.value.floor == pytest.approx(floor)
        assert f"{floor:.4g}" in str(caught.value)
    assert scaling.tokens_needed(CHINCHILLA, n, floor + 1e-3) > 1e15  # just above: huge, but finite


def test_fits_the_law_is_not_identified_on_are_refused():
    points = synthetic(CHINCHILLA, 0.0)
    with pytest.raises(scaling.ScalingError, match=r"5 usable run\(s\).*at least 6 runs"):
        scaling.fit(points[:5])
    one_n = [p for p in points if p.params == points[0].params]  # 5 points, then 10 with a copy
    with pytest.raises(scaling.ScalingError, match=r"1 distinct model size\(s\) N and 5"):
        scaling.fit(one_n + [p.model_copy(update={"run": p.run + "b"}) for p in one_n])
    one_d = [p for p in points if p.tokens == points[0].tokens] * 2
    with pytest.raises(FactoryError, match=r"4 distinct model size\(s\) N and 1 distinct token count"):
        scaling.fit(one_d)


# -- runs really trained, and the command line ------------------------------------------------------
def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "factory.cli", *args], capture_output=True, text=True, env=env, timeout=120)  # fmt: skip


@pytest.mark.slow
def test_cli_fits_recorded_runs_predicts_and_plots(tmp_path, tiny_model):
    """2 widths x 3 step counts of full fine-tuning, all evaluated on the same held-out rows, plus an
    evaluation-only run that the fit must skip; then `factory scaling fit` as a user runs it."""
    wh = factory.init(tmp_path / "wh")
    factory.import_file(wh, str(write_jsonl(tmp_path / "rows.jsonl", alpaca(48))))
    wh.create_snapshot("base")
    evaluation = EvalSettings(eval_split=0.25, max_new_tokens=1)
    narrow = build(tmp_path / "narrow", width=32)
    for model in (narrow, tiny_model):
        for steps in (1, 3, 6):
            values = {"model": str(model), "method": "full", "max_steps": steps, "batch_size": 4,
                      "learning_rate": 3e-3, "eval_split": 0.25}  # fmt: skip
            training.train(wh, "base", "sft", values, evaluation=evaluation)
    trained = wh.sql("SELECT id, metrics FROM runs ORDER BY started_at")
    training.evaluate_run(wh, trained["id"][0], "base", evaluation)
    expected = scaling.points_from_runs(wh, where="trainer = 'sft'")
    with pytest.raises(scaling.ScalingError, match="no run with id nope"):
        scaling.points_from_runs(wh, ["nope", trained["id"][0]])
    with pytest.raises(QueryRefused):
        scaling.points_from_runs(wh, where="1 = 1; DELETE FROM runs")
    wh.close()
    metrics = [json.loads(m) for m in trained["metrics"]]
    sizes = sorted({m["train"]["total_params"] for m in metrics})
    assert len(sizes) == 2 and len({m["train"]["train_tokens"] for m in metrics}) >= 3
    assert len(expected.points) == 6 and expected.skipped == {}
    reference = scaling.fit(expected.points, seed=0, bootstrap=10).constants

    floor = reference.floor(sizes[-1])
    everything = cli("scaling", "fit", "--warehouse", str(tmp_path / "wh"), "--bootstrap", "10",
                     "--target-loss", str(floor * 0.9))  # fmt: skip
    assert everything.returncode == 0, everything.stderr + everything.stdout
    assert "skipped 1 run(s): 1 no total params" in everything.stdout
    assert "on 6 runs (2 model sizes N, 3 token counts D)" in everything.stdout
    for name in scaling.NAMES:  # each constant printed as the Python API fits it
        assert f"  {name:<8} {getattr(reference, name):>11.5g}" in everything.stdout, name
    shown = re.search(
        r"(\d+) refits on runs resampled with replacement \(seed 0\)(, (\d+) resamples)?", everything.stdout
    )
    assert shown and int(shown[1]) + int(shown[3] or 0) == 10, (
        everything.stdout
    )  # each resample refit or told
    assert f"predicted loss at N = {sizes[-1]:,.0f}, D = " in everything.stdout
    assert "unreachable at N" in everything.stdout
    assert f"loss floor at N = {sizes[-1]:,}: {floor:.4f}" in everything.stdout

    plot = tmp_path / "scaling.html"
    target = reference.floor(sizes[0]) + 0.2
    planned = cli("scaling", "fit", "--warehouse", str(tmp_path / "wh"), "--where", "trainer = 'sft'",
                  "--tokens", "20000", "--model-size", str(sizes[0]), "--target-loss", str(target),
                  "--plot", str(plot), "--bootstrap", "10")  # fmt: skip
    assert planned.returncode == 0, planned.stderr + planned.stdout
    assert "skipped" not in planned.stdout
    loss = scaling.predict(reference, sizes[0], 20000)
    assert f"predicted loss at N = {sizes[0]:,}, D = 20,000: {loss:.4f}" in planned.stdout
    needed = scaling.tokens_needed(reference, sizes[0], target)
    assert (
        f"tokens needed for a loss of {target:.4g} at N = {sizes[0]:,}: D = {needed:,.0f}" in planned.stdout
    )
    page = plot.read_text()
    assert "plotly" in page and "N = " in page and '"type":"log"' in page.replace(" ", "")
    for point in expected.points:
        assert point.run in page  # every observed run is a point on the plot

    again = cli("scaling", "fit", "-w", str(tmp_path / "wh"), "--plot", str(plot), "--bootstrap", "0")
    assert again.returncode == 1 and "exists; pass --force" in again.stderr
    inside = cli("scaling", "fit", "-w", str(tmp_path / "wh"), "--plot", str(tmp_path / "wh" / "p.html"))
    assert inside.returncode == 1 and "inside the warehouse" in inside.stderr
    narrow_runs = ",".join(trained["id"][:3])  # the width-32 runs: one N
    too_few = cli("scaling", "fit", "-w", str(tmp_path / "wh"), "--runs", narrow_runs)
    assert too_few.returncode == 1
    assert "3 usable run(s) with 1 distinct model size(s) N and 3 distinct token count(s) D" in too_few.stderr


@pytest.mark.parametrize("flag, value", [("--tokens", "-5"), ("--model-size", "nan"), ("--target-loss", "0")])
def test_planned_numbers_must_be_positive(flag, value, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "factory.cli", "scaling", "fit", flag, value,
                           "--warehouse", str(tmp_path / "none")], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 1 and f"{flag} must be a positive number" in proc.stderr + proc.stdout
