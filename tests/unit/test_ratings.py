"""Elo and Bradley–Terry on known vote sets."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from fleetchat.webui.ratings import (
    Battle,
    battles_from_votes,
    bootstrap_ci,
    compute_bt,
    compute_elo,
    leaderboard,
    win_probability,
)


def test_a_always_beats_b_ranks_a_first():
    battles = [Battle("a", "b", "model_a")] * 5 + [Battle("b", "a", "model_b")] * 5
    elo = compute_elo(battles)
    bt = compute_bt(battles)
    assert elo["a"] > 1000 > elo["b"]
    assert bt["a"] > 1000 > bt["b"]
    assert all(math.isfinite(v) for v in bt.values())  # the prior keeps a perfect record finite
    rows = leaderboard(battles, rounds=20)
    assert [r.model for r in rows] == ["a", "b"]
    assert rows[0].wins == 10 and rows[0].losses == 0 and rows[0].win_rate == 1.0
    assert rows[1].wins == 0 and rows[1].losses == 10 and rows[1].battles == 10


def test_one_battle_moves_elo_by_k_over_two():
    elo = compute_elo([Battle("a", "b", "model_a")], k=4)
    assert elo == pytest.approx({"a": 1002.0, "b": 998.0})
    elo32 = compute_elo([Battle("a", "b", "model_b")], k=32)
    assert elo32 == pytest.approx({"a": 984.0, "b": 1016.0})


def test_symmetric_ties_give_equal_scores():
    battles = [Battle("a", "b", "tie"), Battle("b", "a", "tie (bothbad)")] * 4
    elo = compute_elo(battles)
    bt = compute_bt(battles)
    assert elo["a"] == pytest.approx(elo["b"]) == pytest.approx(1000.0)
    assert bt["a"] == pytest.approx(bt["b"], abs=1e-6)
    rows = leaderboard(battles, rounds=10)
    assert all(r.ties == 8 and r.wins == 0 and r.win_rate == 0.0 for r in rows)


def test_bt_matches_analytic_two_model_case():
    # A wins 3 of every 4: the MLE gives P(A beats B) = 3/4 exactly, i.e. a gap of 400*log10(3).
    battles = [Battle("a", "b", "model_a")] * 30 + [Battle("a", "b", "model_b")] * 10
    bt = compute_bt(battles, prior=0.0)
    assert win_probability(bt["a"], bt["b"]) == pytest.approx(0.75, abs=1e-6)
    assert bt["a"] - bt["b"] == pytest.approx(400 * math.log10(3), abs=1e-3)
    assert (bt["a"] + bt["b"]) / 2 == pytest.approx(1000.0)


def test_bt_transitive_three_models_analytic():
    # Strengths 4:2:1 and every pair played with counts proportional to the BT probabilities:
    # the MLE recovers the strengths exactly.
    strengths = {"x": 4.0, "y": 2.0, "z": 1.0}
    battles = []
    for a, b in (("x", "y"), ("y", "z"), ("x", "z")):
        sa, sb = strengths[a], strengths[b]
        wins_a = round(60 * sa / (sa + sb))
        battles += [Battle(a, b, "model_a")] * wins_a + [Battle(a, b, "model_b")] * (60 - wins_a)
    bt = compute_bt(battles, prior=0.0)
    assert bt["x"] - bt["y"] == pytest.approx(400 * math.log10(2), abs=1e-3)
    assert bt["y"] - bt["z"] == pytest.approx(400 * math.log10(2), abs=1e-3)


def test_bootstrap_ci_contains_estimate_and_is_deterministic():
    battles = (
        [Battle("a", "b", "model_a")] * 12
        + [Battle("a", "b", "model_b")] * 6
        + [Battle("b", "c", "model_a")] * 10
        + [Battle("b", "c", "tie")] * 4
        + [Battle("a", "c", "model_a")] * 8
        + [Battle("c", "a", "model_a")] * 2
    )
    rows = leaderboard(battles, rounds=200, seed=7)
    assert [r.model for r in rows] == ["a", "b", "c"]
    for r in rows:
        assert r.elo_ci[0] <= r.elo <= r.elo_ci[1]
        assert r.bt_ci[0] <= r.bt <= r.bt_ci[1]
        assert r.bt_ci[0] < r.bt_ci[1]  # a real interval, not a point
    again = leaderboard(battles, rounds=200, seed=7)
    assert again == rows
    other = bootstrap_ci(battles, compute_bt, rounds=200, seed=8)
    assert other != {r.model: r.bt_ci for r in rows}


def test_battles_from_votes_skips_single_and_self_votes():
    votes = [
        SimpleNamespace(kind="leftvote", model_a="a", model_b="b"),
        SimpleNamespace(kind="rightvote", model_a="a", model_b="b"),
        SimpleNamespace(kind="tievote", model_a="a", model_b="b"),
        SimpleNamespace(kind="bothbad_vote", model_a="b", model_b="a"),
        SimpleNamespace(kind="upvote", model_a="a", model_b=None),
        SimpleNamespace(kind="leftvote", model_a="a", model_b="a"),
    ]
    assert battles_from_votes(votes) == [
        Battle("a", "b", "model_a"),
        Battle("a", "b", "model_b"),
        Battle("a", "b", "tie"),
        Battle("b", "a", "tie (bothbad)"),
    ]


def test_empty_leaderboard():
    assert leaderboard([], rounds=10) == []
    assert compute_bt([]) == {}
