"""The Leaderboard tab: Elo and Bradley–Terry ratings computed live from the stored votes."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

import gradio as gr

from fleetchat.webui.context import UiContext
from fleetchat.webui.ratings import battles_from_votes, leaderboard
from fleetchat.webui.store import PAIR_VOTES, SINGLE_VOTES

HEADERS = ["Rank", "Model", "Elo", "Elo 95% CI", "BT score", "BT 95% CI", "Battles", "Wins", "Ties",
           "Losses", "Win rate"]
FEEDBACK_HEADERS = ["Model", "Upvotes", "Downvotes", "Flags"]


@dataclass(frozen=True)
class LeaderboardView:
    summary: str
    rows: list[list[object]]
    feedback: list[list[object]]


def compute_view(ctx: UiContext, include_named: bool) -> LeaderboardView:
    """Read the votes and rate the models (blocking: run it in a thread)."""
    modes = ("battle", "side_by_side") if include_named else ("battle",)
    battles = battles_from_votes(ctx.store.list_votes(modes=modes, kinds=PAIR_VOTES))
    table = leaderboard(battles, k=ctx.settings.elo_k, rounds=ctx.settings.bootstrap_rounds, seed=0)
    rows = [
        [rank, r.model, round(r.elo, 1), f"{r.elo_ci[0]:.0f} – {r.elo_ci[1]:.0f}", round(r.bt, 1),
         f"{r.bt_ci[0]:.0f} – {r.bt_ci[1]:.0f}", r.battles, r.wins, r.ties, r.losses, f"{100 * r.win_rate:.0f}%"]
        for rank, r in enumerate(table, start=1)
    ]
    counts: Counter[tuple[str, str]] = Counter(
        (v.model_a, v.kind) for v in ctx.store.list_votes(modes=("chat",), kinds=SINGLE_VOTES)
    )
    feedback = [
        [m, counts[(m, "upvote")], counts[(m, "downvote")], counts[(m, "flag")]]
        for m in sorted({m for m, _ in counts})
    ]
    source = "arena battles and side-by-side votes" if include_named else "anonymous arena battles"
    if battles:
        summary = (
            f"**{len(battles)} battle{'s' if len(battles) != 1 else ''}** between **{len(table)} models**, "
            f"from {source}. Elo: online, "
            f"K={ctx.settings.elo_k:g}. Bradley–Terry: maximum likelihood. 95% intervals from "
            f"{ctx.settings.bootstrap_rounds} bootstrap resamples."
        )
    else:
        summary = f"No votes yet from {source}: play a round in the arena and vote."
    return LeaderboardView(summary=summary, rows=rows, feedback=feedback)


def build_leaderboard_tab(ctx: UiContext, tab: gr.Tab) -> None:
    summary = gr.Markdown(elem_id="leaderboard-summary")
    table = gr.Dataframe(headers=HEADERS, value=[], interactive=False, elem_id="leaderboard-table",
                         label="Arena leaderboard", wrap=True)
    with gr.Row():
        include_named = gr.Checkbox(False, label="Include side-by-side (named) votes",
                                    elem_id="leaderboard-include-named")
        refresh = gr.Button("Refresh", elem_id="leaderboard-refresh", scale=0)
    feedback = gr.Dataframe(headers=FEEDBACK_HEADERS, value=[], interactive=False,
                            label="Chat feedback (votes in the Chat tab)", elem_id="leaderboard-feedback")

    async def update(named: bool):
        view = await asyncio.to_thread(compute_view, ctx, bool(named))
        return view.summary, view.rows, view.feedback

    outputs = [summary, table, feedback]
    tab.select(update, [include_named], outputs, show_progress="hidden")
    refresh.click(update, [include_named], outputs)
    include_named.change(update, [include_named], outputs)
