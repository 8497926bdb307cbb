"""The Arena tabs: two models answer the same prompts side by side; the user votes.

``anonymous=True`` is the battle: two different served models drawn at random when a round starts,
shown as Model A / Model B, names revealed after the vote, then the round is over until "New round".
``anonymous=False`` is side-by-side: the two models are chosen by name. Both stream their replies
concurrently (one task per side feeding a queue), and store both conversations and the vote.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from fleetchat.errors import FleetchatError
from fleetchat.webui.chat import params_block, pick_model
from fleetchat.webui.client import GenParams
from fleetchat.webui.context import UiContext
from fleetchat.webui.history import drop_last_reply, error_message, normalize, to_openai

VOTES = (("leftvote", "A is better"), ("rightvote", "B is better"), ("tievote", "Tie"),
         ("bothbad_vote", "Both bad"))


def new_round() -> dict[str, Any]:
    return {"models": None, "conv_ids": [uuid.uuid4().hex, uuid.uuid4().hex], "voted": False}


def needs_two_text(models: list[str], base_url: str) -> str:
    served = ", ".join(f"`{m}`" for m in models) or "none"
    return (
        f"**The arena needs at least two served models.** The API at `{base_url}` serves "
        f"{len(models)} ({served}). Start a second model (another `fleetchat worker`, or "
        "`fleetchat serve` with two models); it appears here without a restart."
    )


async def stream_both(
    ctx: UiContext, models: list[str], messages: list[list[dict[str, str]]], params: GenParams
) -> AsyncIterator[tuple[int, str | None, FleetchatError | None]]:
    """Merge two streams: yields ``(side, delta, None)`` and ``(side, None, error)`` as they come."""
    queue: asyncio.Queue[tuple[int, str | None, FleetchatError | None] | None] = asyncio.Queue()

    async def pump(side: int) -> None:
        try:
            async for delta in ctx.client.stream_chat(models[side], messages[side], params):
                queue.put_nowait((side, delta, None))
        except FleetchatError as exc:
            queue.put_nowait((side, None, exc))
        finally:
            queue.put_nowait(None)

    tasks = [asyncio.create_task(pump(0)), asyncio.create_task(pump(1))]
    try:
        done = 0
        while done < 2:
            item = await queue.get()
            if item is None:
                done += 1
            else:
                yield item
    finally:
        # On Stop the consumer is cancelled: cancel both sides so both API requests are closed.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class ArenaTab:
    anonymous: bool
    notice: gr.Markdown
    model_a: gr.Dropdown | None
    model_b: gr.Dropdown | None
    ctx: UiContext

    @property
    def model_inputs(self) -> list[Any]:
        return [] if self.anonymous else [self.model_a, self.model_b]

    @property
    def model_outputs(self) -> list[Any]:
        return [self.notice] if self.anonymous else [self.notice, self.model_a, self.model_b]

    def models_changed(self, models: list[str], *current: str | None) -> list[Any]:
        notice = gr.update(value=needs_two_text(models, self.ctx.client.base_url), visible=len(models) < 2)
        if self.anonymous:
            return [notice]
        a = pick_model(models, current[0], 0)
        b = pick_model(models, current[1], 1)
        return [notice, gr.update(choices=models, value=a), gr.update(choices=models, value=b)]


def build_arena_tab(ctx: UiContext, *, anonymous: bool) -> ArenaTab:
    key = "battle" if anonymous else "sbs"
    mode = "battle" if anonymous else "side_by_side"
    if anonymous:
        gr.Markdown(
            "Two anonymous models answer each prompt. Chat as long as you like, then vote: the names are "
            "revealed after the vote. **New round** starts over with two new models."
        )
    else:
        gr.Markdown("Pick two models, ask them the same thing, and vote for the better answer.")
    notice = gr.Markdown(visible=False, elem_id=f"{key}-notice")
    model_a = model_b = None
    if not anonymous:
        with gr.Row():
            model_a = gr.Dropdown(choices=[], label="Model A", interactive=True, elem_id=f"{key}-model-a",
                                  allow_custom_value=True)
            model_b = gr.Dropdown(choices=[], label="Model B", interactive=True, elem_id=f"{key}-model-b",
                                  allow_custom_value=True)
    with gr.Row():
        chat_a = gr.Chatbot(label="Model A", height=420, elem_id=f"{key}-chatbot-a", buttons=["copy"])
        chat_b = gr.Chatbot(label="Model B", height=420, elem_id=f"{key}-chatbot-b", buttons=["copy"])
    reveal = gr.Markdown(elem_id=f"{key}-reveal")
    with gr.Row():
        vote_buttons = [
            gr.Button(label, interactive=False, elem_id=f"{key}-{kind}") for kind, label in VOTES
        ]
    with gr.Row():
        textbox = gr.Textbox(show_label=False, placeholder="Ask both models something and press Enter",
                             scale=6, elem_id=f"{key}-input")
        send = gr.Button("Send", variant="primary", scale=1, elem_id=f"{key}-send")
        stop = gr.Button("Stop", variant="stop", scale=1, elem_id=f"{key}-stop")
    with gr.Row():
        restart = gr.Button("New round" if anonymous else "Clear", elem_id=f"{key}-new-round")
        regenerate = gr.Button("Regenerate", elem_id=f"{key}-regenerate")
    temperature, top_p, max_tokens = params_block(ctx)
    round_state = gr.State(new_round)
    go = gr.State(False)  # whether the step before a reply accepted the request
    chosen = [model_a, model_b] if not anonymous else []
    disabled_votes = [gr.update(interactive=False)] * len(VOTES)

    def refuse(problem: str):
        # A toast rather than gr.Error: an error would paint "Error" badges over both chats.
        gr.Warning(problem)
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), False

    async def start_turn(text: str, hist_a: list, hist_b: list, rnd: dict[str, Any], *names: str | None):
        if rnd["voted"]:
            return refuse("This round is over — press “New round” to start another." if anonymous
                           else "You voted on this conversation — press “Clear” to start another.")
        if not text.strip():
            return refuse("Type a message first.")
        if rnd["models"] is None:
            try:
                served = await ctx.client.list_models()
            except FleetchatError as exc:
                return refuse(str(exc))
            if len(served) < 2:
                return refuse(f"The arena needs at least two served models; the API serves {len(served)}.")
            if anonymous:
                pair = ctx.rng.sample(served, 2)
            else:
                pair = [names[0], names[1]]
                if not pair[0] or not pair[1] or pair[0] == pair[1]:
                    return refuse("Choose two different models.")
                missing = [m for m in pair if m not in served]
                if missing:
                    return refuse(f"Model {missing[0]} is not served any more.")
            rnd = {**rnd, "models": pair}
        user = {"role": "user", "content": text}
        return "", normalize(hist_a) + [user], normalize(hist_b) + [user], rnd, True

    async def reply(
        go: bool, hist_a: list, hist_b: list, rnd: dict[str, Any], temp: float, tp: float, max_tok: float
    ) -> AsyncIterator[Any]:
        if not go:
            yield (gr.skip(),) * (2 + len(VOTES))
            return
        histories = [normalize(hist_a), normalize(hist_b)]
        params = GenParams(temperature=float(temp), top_p=float(tp), max_tokens=int(max_tok))
        messages = [to_openai(h) for h in histories]
        answers = [{"role": "assistant", "content": ""} for _ in range(2)]
        for h, a in zip(histories, answers, strict=True):
            h.append(a)
        failed = [False, False]
        try:
            yield *histories, *disabled_votes
            async for side, delta, error in stream_both(ctx, rnd["models"], messages, params):
                if error is not None:
                    failed[side] = True
                    if not answers[side]["content"]:
                        histories[side].remove(answers[side])
                    histories[side].append(error_message(str(error)))
                    gr.Warning(f"Model {'AB'[side]}: {error}")
                else:
                    answers[side]["content"] += delta
                yield *histories, *disabled_votes
        finally:
            for side in range(2):
                saved = [m for m in histories[side] if m is not answers[side] or m["content"]]
                await ctx.save_conversation(
                    rnd["conv_ids"][side], mode=mode, model=rnd["models"][side],
                    messages=to_openai(saved), gen_params=params.as_dict(),
                )
        can_vote = not any(failed)
        yield *histories, *[gr.update(interactive=can_vote)] * len(VOTES)

    def regenerate_prep(hist_a: list, hist_b: list, rnd: dict[str, Any]):
        if rnd["voted"] or rnd["models"] is None:
            gr.Warning("Nothing to regenerate in this round.")
            return gr.skip(), gr.skip(), False
        return drop_last_reply(normalize(hist_a)), drop_last_reply(normalize(hist_b)), True

    def make_vote(kind: str):
        async def vote(rnd: dict[str, Any]):
            if rnd["voted"] or rnd["models"] is None:
                gr.Warning("Nothing to vote on.")
                return (gr.skip(),) * (4 + len(VOTES))
            a, b = rnd["models"]
            await ctx.add_vote(kind, mode=mode, model_a=a, model_b=b,
                               conversation_a=rnd["conv_ids"][0], conversation_b=rnd["conv_ids"][1])
            gr.Info("Vote recorded. Thank you!")
            text = f"### Model A: `{a}` · Model B: `{b}`"
            if anonymous:
                text += "\nPress **New round** for two new models."
            return ({**rnd, "voted": True}, text, gr.update(label=f"Model A: {a}"),
                    gr.update(label=f"Model B: {b}"), *disabled_votes)

        return vote

    def restart_round():
        return (new_round(), gr.update(value=[], label="Model A"), gr.update(value=[], label="Model B"),
                "", "", *disabled_votes)

    reply_inputs = [go, chat_a, chat_b, round_state, temperature, top_p, max_tokens]
    reply_outputs = [chat_a, chat_b, *vote_buttons]
    streams = []
    for trigger in (textbox.submit, send.click):
        event = trigger(start_turn, [textbox, chat_a, chat_b, round_state, *chosen],
                        [textbox, chat_a, chat_b, round_state, go])
        streams.append(event.then(reply, reply_inputs, reply_outputs, concurrency_limit=None))
    regen = regenerate.click(regenerate_prep, [chat_a, chat_b, round_state], [chat_a, chat_b, go],
                             queue=False)
    streams.append(regen.then(reply, reply_inputs, reply_outputs, concurrency_limit=None))
    stop.click(None, None, None, cancels=streams)
    restart.click(restart_round, None,
                  [round_state, chat_a, chat_b, textbox, reveal, *vote_buttons],
                  queue=False, cancels=streams)
    for button, (kind, _label) in zip(vote_buttons, VOTES, strict=True):
        button.click(make_vote(kind), [round_state], [round_state, reveal, chat_a, chat_b, *vote_buttons])
    if not anonymous:
        # Changing a model mid-conversation starts a new conversation with the new pair.
        for dd in chosen:
            dd.input(restart_round, None,
                     [round_state, chat_a, chat_b, textbox, reveal, *vote_buttons],
                     queue=False, cancels=streams)
    return ArenaTab(anonymous=anonymous, notice=notice, model_a=model_a, model_b=model_b, ctx=ctx)
