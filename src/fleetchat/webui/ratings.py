"""Ratings: Elo and Bradley–Terry scores with bootstrap confidence intervals, from arena votes.

Pure functions of a list of :class:`Battle` (and a seed), so the leaderboard is computed live from
the stored votes and tested on known vote sets. Scores use the Elo scale: a difference of ``scale``
points means the stronger model wins ``base`` times as often (400 and 10, as FastChat and chess).

* Online Elo (FastChat's ``compute_elo``): battles replayed in order, each moving both ratings by
  ``k * (score - expected)``. Order-dependent, hence the bootstrap.
* Bradley–Terry: the maximum-likelihood strengths of ``P(i beats j) = sigmoid(theta_i - theta_j)``,
  fitted by Newton's method; a tie counts as half a win for each side (as FastChat does). A weak
  Gaussian prior on ``theta`` keeps the scores finite when a model has won or lost every battle;
  with more than a handful of votes it changes little.
* Confidence intervals: percentile bootstrap over battles (resampled with replacement).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

OUTCOMES = ("model_a", "model_b", "tie", "tie (bothbad)")
_VOTE_OUTCOME = {"leftvote": "model_a", "rightvote": "model_b", "tievote": "tie", "bothbad_vote": "tie (bothbad)"}


@dataclass(frozen=True)
class Battle:
    model_a: str
    model_b: str
    outcome: str  # one of OUTCOMES


@dataclass(frozen=True)
class LeaderboardRow:
    model: str
    elo: float
    elo_ci: tuple[float, float]
    bt: float
    bt_ci: tuple[float, float]
    battles: int
    wins: int
    ties: int
    losses: int

    @property
    def win_rate(self) -> float:
        return self.wins / self.battles if self.battles else 0.0


def battles_from_votes(votes: Iterable[object]) -> list[Battle]:
    """Battles from stored pair votes (objects with ``kind``, ``model_a``, ``model_b``).

    Single-model votes and votes of a model against itself carry no comparison and are skipped.
    """
    out = []
    for vote in votes:
        outcome = _VOTE_OUTCOME.get(vote.kind)  # type: ignore[attr-defined]
        a, b = vote.model_a, vote.model_b  # type: ignore[attr-defined]
        if outcome and b and a != b:
            out.append(Battle(a, b, outcome))
    return out


def _score_a(outcome: str) -> float:
    if outcome == "model_a":
        return 1.0
    if outcome == "model_b":
        return 0.0
    if outcome in ("tie", "tie (bothbad)"):
        return 0.5
    raise ValueError(f"unknown battle outcome {outcome!r}")


def compute_elo(
    battles: Sequence[Battle], *, k: float = 4.0, scale: float = 400.0, base: float = 10.0, initial: float = 1000.0
) -> dict[str, float]:
    """Online Elo: replay ``battles`` in order."""
    rating: dict[str, float] = {}
    for battle in battles:
        ra = rating.setdefault(battle.model_a, initial)
        rb = rating.setdefault(battle.model_b, initial)
        expected_a = 1.0 / (1.0 + base ** ((rb - ra) / scale))
        score_a = _score_a(battle.outcome)
        rating[battle.model_a] = ra + k * (score_a - expected_a)
        rating[battle.model_b] = rb + k * ((1.0 - score_a) - (1.0 - expected_a))
    return rating


def _bt_arrays(battles: Sequence[Battle], models: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    index = {m: i for i, m in enumerate(models)}
    ia = np.fromiter((index[b.model_a] for b in battles), dtype=np.int64, count=len(battles))
    ib = np.fromiter((index[b.model_b] for b in battles), dtype=np.int64, count=len(battles))
    sa = np.fromiter((_score_a(b.outcome) for b in battles), dtype=np.float64, count=len(battles))
    return ia, ib, sa


def _fit_bt(ia: np.ndarray, ib: np.ndarray, sa: np.ndarray, m: int, prior: float) -> np.ndarray:
    """Newton's method for the (penalised) Bradley–Terry log-likelihood; returns centred thetas."""
    theta = np.zeros(m)
    eye = np.eye(m)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(theta[ia] - theta[ib])))
        resid = sa - p
        grad = np.bincount(ia, resid, m) - np.bincount(ib, resid, m) - prior * theta
        w = p * (1.0 - p)
        hess = np.zeros((m, m))
        np.add.at(hess, (ia, ia), w)
        np.add.at(hess, (ib, ib), w)
        np.add.at(hess, (ia, ib), -w)
        np.add.at(hess, (ib, ia), -w)
        hess += prior * eye
        # The likelihood is invariant to a shift of all thetas: lstsq takes the step orthogonal to it.
        step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        theta = theta + step
        theta -= theta.mean()
        if np.max(np.abs(step)) < 1e-9:
            break
    return theta


def compute_bt(
    battles: Sequence[Battle],
    *,
    scale: float = 400.0,
    base: float = 10.0,
    initial: float = 1000.0,
    prior: float = 0.05,
) -> dict[str, float]:
    """Bradley–Terry scores on the Elo scale, centred on ``initial``."""
    models = sorted({b.model_a for b in battles} | {b.model_b for b in battles})
    if not models:
        return {}
    ia, ib, sa = _bt_arrays(battles, models)
    theta = _fit_bt(ia, ib, sa, len(models), prior)
    factor = scale / math.log(base)
    return {m: initial + factor * float(t) for m, t in zip(models, theta, strict=True)}


def win_probability(score_a: float, score_b: float, *, scale: float = 400.0, base: float = 10.0) -> float:
    """P(a beats b) implied by two scores on the Elo scale."""
    return 1.0 / (1.0 + base ** ((score_b - score_a) / scale))


def bootstrap_ci(
    battles: Sequence[Battle],
    rate: Callable[[Sequence[Battle]], dict[str, float]],
    *,
    rounds: int,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of ``rate(battles)`` for each model (deterministic per seed)."""
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    n = len(battles)
    for _ in range(rounds if n else 0):
        picked = [battles[i] for i in rng.integers(0, n, n)]
        for model, value in rate(picked).items():
            samples.setdefault(model, []).append(value)
    tail = (1.0 - level) / 2.0 * 100.0
    return {
        model: (float(np.percentile(vals, tail)), float(np.percentile(vals, 100.0 - tail)))
        for model, vals in samples.items()
    }


def leaderboard(
    battles: Sequence[Battle], *, k: float = 4.0, rounds: int = 100, seed: int = 0
) -> list[LeaderboardRow]:
    """One row per model, best Bradley–Terry score first."""
    elo = compute_elo(battles, k=k)
    bt = compute_bt(battles)
    elo_ci = bootstrap_ci(battles, lambda b: compute_elo(b, k=k), rounds=rounds, seed=seed)
    bt_ci = bootstrap_ci(battles, compute_bt, rounds=rounds, seed=seed)
    counts: dict[str, list[int]] = {m: [0, 0, 0] for m in bt}  # wins, ties, losses
    for battle in battles:
        score = _score_a(battle.outcome)
        if score == 0.5:
            counts[battle.model_a][1] += 1
            counts[battle.model_b][1] += 1
        else:
            winner, loser = (battle.model_a, battle.model_b) if score == 1.0 else (battle.model_b, battle.model_a)
            counts[winner][0] += 1
            counts[loser][2] += 1
    rows = [
        LeaderboardRow(
            model=m,
            elo=elo[m],
            elo_ci=elo_ci.get(m, (elo[m], elo[m])),
            bt=bt[m],
            bt_ci=bt_ci.get(m, (bt[m], bt[m])),
            battles=sum(counts[m]),
            wins=counts[m][0],
            ties=counts[m][1],
            losses=counts[m][2],
        )
        for m in bt
    ]
    rows.sort(key=lambda r: (-r.bt, -r.elo, r.model))
    return rows
