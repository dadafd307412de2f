"""Plan data with a scaling law: L(N, D) = A/N^alpha + B/D^beta + E (survey eq. 23), fitted to runs.

Before paying for more data a user wants to know what it buys: the held-out loss a model of N
parameters should reach after D training tokens, and how many tokens a target loss needs. The
`runs` table already holds what the law needs, per training run: `train.total_params` (N),
`train.train_tokens` (D, the tokens its steps ran through the model) and `eval.loss` (L, the
held-out loss after training).

The fit is Hoffmann et al. 2022 (Chinchilla), approach 3: minimise the Huber loss (delta 1e-3)
between log L(N, D) and the log observed loss, with A = exp(a), B = exp(b), E = exp(e) so the
constants stay positive and log L is a log-sum-exp, by L-BFGS-B (scipy) from a grid of starting
points, keeping the best optimum. Uncertainty is a seeded bootstrap over runs: draw as many runs
as there are, with replacement, refit (from the best optima of the full fit), and report each
constant's standard deviation and 5-95% interval. A fit needs at least 6 runs and 2 distinct N
and 2 distinct D: with one N, A/N^alpha is a constant that E absorbs (the same for D), and the
law is not identified.

The points should share one held-out set: runs evaluated on different eval rows measure different
things (`bench/scaling_runs.py` builds its snapshots so that every run holds out the same rows).

`factory scaling fit` (factory/cli/scaling.py) is the command line over these functions.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from factory.errors import InputError
from factory.store import outputs
from factory.store.warehouse import Warehouse

HUBER_DELTA = 1e-3
MIN_POINTS = 6
NAMES = ("A", "alpha", "B", "beta", "E")
# Starting points. Hoffmann et al. use alpha, beta in 0..2 by 0.5, e in -1..1 by 0.5 and a, b in
# 0..25 by 5 (4,500 starts); this grid spans the same, coarser (675 starts, about 4 s), since each
# start is a full L-BFGS-B run.
GRID = {
    "a": (0.0, 6.0, 12.0, 18.0, 24.0),
    "alpha": (0.25, 0.75, 1.5),
    "b": (0.0, 6.0, 12.0, 18.0, 24.0),
    "beta": (0.25, 0.75, 1.5),
    "e": (-1.0, 0.0, 1.0),
}
BOUNDS = [(-20.0, 60.0), (0.0, 5.0), (-20.0, 60.0), (0.0, 5.0), (-20.0, 5.0)]  # a, alpha, b, beta, e
REFIT_STARTS = 4  # distinct optima of the full fit that each bootstrap refit starts from


class ScalingError(InputError):
    """Runs the law cannot be fitted to, or a question it cannot answer; the message says why."""


class Unreachable(ScalingError):
    """A target loss at or below the floor E + A/N^alpha that no amount of data reaches at that N."""

    def __init__(self, message: str, floor: float) -> None:
        super().__init__(message)
        self.floor = floor


class Point(BaseModel):
    run: str = Field(description="run id")
    params: float = Field(gt=0, description="N: the model's parameters (train.total_params)")
    tokens: float = Field(gt=0, description="D: tokens the training steps ran through (train.train_tokens)")
    loss: float = Field(gt=0, description="L: held-out loss after training (eval.loss)")
    method: str | None = Field(None, description="the run's method (full, lora, ...)")
    held_out: str | None = Field(
        None, description="how many rows its loss is over, at which split share and seed"
    )


class Selection(BaseModel):
    points: list[Point]
    skipped: dict[str, int] = Field(description="runs left out, by snake_case reason")


class Constants(BaseModel):
    A: float
    alpha: float
    B: float
    beta: float
    E: float

    def loss(self, params: float, tokens: float) -> float:
        """L(N, D) = A/N^alpha + B/D^beta + E."""
        return self.A / params**self.alpha + self.B / tokens**self.beta + self.E

    def floor(self, params: float) -> float:
        """The loss a model of `params` parameters approaches with unlimited data: E + A/N^alpha."""
        return self.E + self.A / params**self.alpha


class Spread(BaseModel):
    std: float
    low: float = Field(description="5th percentile over the bootstrap refits")
    high: float = Field(description="95th percentile over the bootstrap refits")


class ScalingFit(BaseModel):
    constants: Constants
    spread: dict[str, Spread] = Field(description="per constant; empty without a bootstrap")
    points: int
    params: list[float] = Field(description="the distinct N of the points, ascending")
    tokens: list[float] = Field(description="the distinct D of the points, ascending")
    rms_log_error: float = Field(description="root mean square of log(predicted) - log(observed)")
    bootstrap: int = Field(description="bootstrap refits the spread is computed over")
    bootstrap_unidentified: int = Field(description="resamples left out: fewer than 2 distinct N or D")
    seed: int
    huber_delta: float = HUBER_DELTA
    draws: list[Constants] = Field(default_factory=list, description="the bootstrap refits' constants")


# -- reading runs ----------------------------------------------------------------------------------
def points_from_runs(wh: Warehouse, runs: Sequence[str] | None = None, where: str | None = None) -> Selection:
    """The (N, D, L) of every succeeded run that recorded all three, among `runs` (ids) and/or the
    runs matching `where` (a SQL condition over the runs table, checked like every user
    expression); the others are counted by reason."""
    conditions, params = [], []
    if where:
        conditions.append(f"({wh.user_expression(where)})")
    if runs:
        conditions.append("list_contains(?, id)")
        params.append(list(runs))
    found = wh.sql(
        "SELECT id, status, metrics, method, config FROM runs"
        + (" WHERE " + " AND ".join(conditions) if conditions else "")
        + " ORDER BY started_at, id",
        params or None,
    )
    if runs:
        missing = sorted(set(runs) - set(found["id"].to_list()))
        if missing:
            raise ScalingError(
                f"--runs: no run with id {', '.join(missing)}"
                + (" matching --where" if where else "")
                + ": see `factory runs`"
            )
    points: list[Point] = []
    skipped: dict[str, int] = {}
    for run_id, status, metrics, method, config in found.iter_rows():
        reason = _unusable(status, metrics)
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        values, settings = json.loads(metrics), json.loads(config or "{}")
        points.append(
            Point(
                run=run_id,
                params=values["train"]["total_params"],
                tokens=values["train"]["train_tokens"],
                loss=values["eval"]["loss"],
                method=method,
                held_out=f"{values['eval'].get('rows')} rows at eval_split {settings.get('eval_split')}, "
                f"seed {settings.get('seed')}",
            )
        )
    return Selection(points=points, skipped=skipped)


def _unusable(status: str | None, metrics: str | None) -> str | None:
    if status != "succeeded":
        return "not_succeeded"
    values = json.loads(metrics or "{}")
    trained = values.get("train") or {}
    if not _positive(trained.get("total_params")):
        return "no_total_params"  # an evaluation-only run, or a trainer that does not count them
    if not _positive(trained.get("train_tokens")):
        return "no_train_tokens"  # recorded before trainers counted tokens
    if not _positive((values.get("eval") or {}).get("loss")):
        return "no_eval_loss"  # trained with eval_split 0: nothing held out
    return None


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


# -- fitting ---------------------------------------------------------------------------------------
def check(points: Sequence[Point]) -> None:
    """Refuse points the law is not identified on."""
    n, d = len({p.params for p in points}), len({p.tokens for p in points})
    if len(points) < MIN_POINTS or n < 2 or d < 2:
        raise ScalingError(
            f"{len(points)} usable run(s) with {n} distinct model size(s) N and {d} distinct token "
            f"count(s) D: fitting A/N^alpha + B/D^beta + E needs at least {MIN_POINTS} runs, 2 distinct N "
            "and 2 distinct D (with one N, A/N^alpha is a constant E absorbs); train more runs "
            "at other model sizes or data sizes"
        )


def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray):
    """Sum of Huber(log L(N, D) - log L) / delta, and its gradient in (a, alpha, b, beta, e)."""
    a, alpha, b, beta, e = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    top = terms.max(0)
    weights = np.exp(terms - top)
    total = weights.sum(0)
    residual = top + np.log(total) - log_l
    weights /= total  # d log L / d term
    small = np.abs(residual) <= HUBER_DELTA
    value = np.where(small, 0.5 * residual**2 / HUBER_DELTA, np.abs(residual) - 0.5 * HUBER_DELTA)
    slope = np.where(small, residual / HUBER_DELTA, np.sign(residual))
    grad = np.array(
        [
            (slope * weights[0]).sum(),
            -(slope * weights[0] * log_n).sum(),
            (slope * weights[1]).sum(),
            -(slope * weights[1] * log_d).sum(),
            (slope * weights[2]).sum(),
        ]
    )
    return float(value.sum() / HUBER_DELTA), grad / HUBER_DELTA


def _minimise(starts: Iterable[np.ndarray], data: tuple[np.ndarray, ...]) -> list[tuple[float, np.ndarray]]:
    """(objective, theta) of the optimum reached from each start, best first."""
    from scipy.optimize import minimize

    found = []
    for start in starts:
        result = minimize(_objective, start, args=data, jac=True, method="L-BFGS-B", bounds=BOUNDS)
        if np.isfinite(result.fun):
            found.append((float(result.fun), np.asarray(result.x)))
    return sorted(found, key=lambda f: f[0])


def _data(points: Sequence[Point]) -> tuple[np.ndarray, ...]:
    return (
        np.log([p.params for p in points]),
        np.log([p.tokens for p in points]),
        np.log([p.loss for p in points]),
    )


def _constants(theta: np.ndarray) -> Constants:
    a, alpha, b, beta, e = (float(x) for x in theta)
    return Constants(A=math.exp(a), alpha=alpha, B=math.exp(b), beta=beta, E=math.exp(e))


def _distinct(optima: list[tuple[float, np.ndarray]], k: int) -> list[np.ndarray]:
    kept: list[np.ndarray] = []
    for _, theta in optima:
        if all(np.abs(theta - other).max() > 1e-3 for other in kept):
            kept.append(theta)
        if len(kept) == k:
            break
    return kept


def fit(points: Sequence[Point], seed: int = 0, bootstrap: int = 200) -> ScalingFit:
    """Fit eq. 23 to `points` from every start of GRID, then `bootstrap` seeded refits over
    resampled points for the spread of each constant (0: no spread)."""
    check(points)
    data = _data(points)
    starts = (np.array(s) for s in itertools.product(*GRID.values()))
    optima = _minimise(starts, data)
    if not optima:
        raise ScalingError("the fit diverged from every starting point: check the runs' losses")
    best = optima[0][1]
    constants = _constants(best)
    refit_from = _distinct(optima, REFIT_STARTS)
    rng = np.random.default_rng(seed)
    draws: list[Constants] = []
    unidentified = 0
    for _ in range(bootstrap):
        sample = [points[k] for k in rng.integers(0, len(points), len(points))]
        if len({p.params for p in sample}) < 2 or len({p.tokens for p in sample}) < 2:
            unidentified += 1
            continue
        refit = _minimise(refit_from, _data(sample))
        if refit:
            draws.append(_constants(refit[0][1]))
    spread = {}
    if draws:
        table = np.array([[getattr(c, name) for name in NAMES] for c in draws])
        for k, name in enumerate(NAMES):
            low, high = np.percentile(table[:, k], [5, 95])
            spread[name] = Spread(std=float(table[:, k].std(ddof=1)) if len(draws) > 1 else 0.0,
                                  low=float(low), high=float(high))  # fmt: skip
    log_n, log_d, log_l = data
    predicted = np.log([constants.loss(math.exp(n), math.exp(d)) for n, d in zip(log_n, log_d, strict=True)])
    return ScalingFit(
        constants=constants,
        spread=spread,
        points=len(points),
        params=sorted({p.params for p in points}),
        tokens=sorted({p.tokens for p in points}),
        rms_log_error=float(np.sqrt(np.mean((predicted - log_l) ** 2))),
        bootstrap=len(draws),
        bootstrap_unidentified=unidentified,
        seed=seed,
        draws=draws,
    )


def warnings(points: Sequence[Point], result: ScalingFit) -> list[str]:
    """What makes a fit worth less than its numbers look: runs that measure different things, and
    constants the optimiser left at a bound (the runs do not pin them down)."""
    out = []
    methods = sorted({p.method or "?" for p in points})
    if len(methods) > 1:
        out.append(
            f"the runs use different methods ({', '.join(methods)}): N counts every parameter, adapters "
            "included, so one base model tuned two ways looks like two model sizes; fit one method (--where)"
        )
    held = sorted({p.held_out or "?" for p in points})
    if len(held) > 1:
        out.append(
            f"the losses are over different held-out sets ({'; '.join(held)}): they measure different "
            "things; fit runs evaluated on the same rows"
        )
    theta = [math.log(result.constants.A), result.constants.alpha, math.log(result.constants.B),
             result.constants.beta, math.log(result.constants.E)]  # fmt: skip
    for name, value, (low, high) in zip(("A", "alpha", "B", "beta", "E"), theta, BOUNDS, strict=True):
        if min(value - low, high - value) < 1e-6 * max(1.0, abs(value)):
            out.append(
                f"{name} sits at the bound of its search range: the runs do not pin it down (read its interval)"
            )
    return out


# -- questions -------------------------------------------------------------------------------------
def predict(constants: Constants, params: float, tokens: float) -> float:
    """The held-out loss L(N, D) the law gives a model of `params` parameters after `tokens` tokens."""
    return constants.loss(params, tokens)


def band(fit: ScalingFit, params: float, tokens: float) -> tuple[float, float] | None:
    """The 5-95% interval of L(N, D) over the bootstrap refits (None without a bootstrap)."""
    if not fit.draws:
        return None
    low, high = np.percentile([c.loss(params, tokens) for c in fit.draws], [5, 95])
    return float(low), float(high)


def tokens_needed(constants: Constants, params: float, target: float) -> float:
    """D = (B / (L - E - A/N^alpha))^(1/beta): the tokens a model of `params` parameters needs to
    reach the loss `target`. Raises `Unreachable` (with the floor) when target <= E + A/N^alpha."""
    floor = constants.floor(params)
    if target <= floor:
        raise Unreachable(
            f"a loss of {target:.4g} is unreachable at N = {params:,.0f}: no amount of data goes below "
            f"E + A/N^alpha = {floor:.4g} there; aim higher or plan a larger model",
            floor,
        )
    return (constants.B / (target - floor)) ** (1 / constants.beta)


def plot(
    fit: ScalingFit,
    points: Sequence[Point],
    path: str | Path,
    protected: Iterable[Path] = (),
    force: bool = False,
) -> Path:
    """An HTML page (plotly, opens offline): observed losses per N against D and the fitted curves,
    log axes. Written through `outputs.write_file`: never into `protected`, never over a file
    without `force`."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    c = fit.constants
    low = min(p.tokens for p in points) / 2
    high = max(p.tokens for p in points) * 4
    grid = np.geomspace(low, high, 100)
    figure = go.Figure()
    for k, n in enumerate(fit.params):
        colour = qualitative.Plotly[k % len(qualitative.Plotly)]
        mine = [p for p in points if p.params == n]
        figure.add_trace(go.Scatter(
            x=[p.tokens for p in mine], y=[p.loss for p in mine], mode="markers", name=f"N = {n:,.0f} (runs)",
            marker={"color": colour, "size": 9}, text=[p.run for p in mine],
            hovertemplate="%{text}<br>D %{x:,.0f}<br>loss %{y:.4f}<extra></extra>",
        ))  # fmt: skip
        figure.add_trace(go.Scatter(
            x=grid, y=[c.loss(n, d) for d in grid], mode="lines", name=f"N = {n:,.0f} (fit)",
            line={"color": colour}, hovertemplate="D %{x:,.0f}<br>fit %{y:.4f}<extra></extra>",
        ))  # fmt: skip
    figure.update_layout(
        title=(
            f"L(N, D) = {c.A:.4g}/N^{c.alpha:.3f} + {c.B:.4g}/D^{c.beta:.3f} + {c.E:.4g}"
            f" ({fit.points} runs, RMS log error {fit.rms_log_error:.4f})"
        ),
        xaxis={"type": "log", "title": "D: training tokens"},
        yaxis={"type": "log", "title": "held-out loss"},
        template="plotly_white",
    )
    page = figure.to_html(full_html=True, include_plotlyjs=True, config={"displaylogo": False})
    return outputs.write_file(path, lambda tmp: tmp.write_text(page, encoding="utf-8"), protected, force)
