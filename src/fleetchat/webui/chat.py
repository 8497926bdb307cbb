"""The Chat tab: one model, streamed markdown replies, Stop/Regenerate/Clear, up/down votes and flags."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from fleetchat.errors import FleetchatError
from fleetchat.webui.client import GenParams
from fleetchat.webui.context import UiContext
from fleetchat.webui.history import drop_last_reply, error_message, normalize, to_openai


def pick_model(models: list[str], current: str | None, preferred_index: int = 0) -> str | None:
    """Keep the user's choice while it is still served, else fall back to a served model."""
    if current in models:
        return current
    if not models:
        return None
    return models[min(preferred_index, len(models) - 1)]


def params_block(ctx: UiContext) -> tuple[gr.Slider, gr.Slider, gr.Slider]:
    with gr.Accordion("Parameters", open=False):
        with gr.Row():
            temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.1, label="Temperature")
            top_p = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="Top P")
            max_tokens = gr.Slider(
                1, 4096, value=ctx.settings.default_max_tokens, step=1, label="Max output tokens"
            )
    return temperature, top_p, max_tokens


@dataclass
class ChatTab:
    model: gr.Dropdown
    chatbot: gr.Chatbot
    textbox: gr.Textbox

    @property
    def model_inputs(self) -> list[Any]:
        return [self.model]

    @property
    def model_outputs(self) -> list[Any]:
        return [self.model]

    def models_changed(self, models: list[str], current: str | None) -> list[Any]:
        return [gr.update(choices=models, value=pick_model(models, current))]


def build_chat_tab(ctx: UiContext) -> ChatTab:
    with gr.Row():
        model = gr.Dropdown(
            choices=[], label="Model", interactive=True, scale=3, elem_id="chat-model",
            allow_custom_value=True,
        )
    chatbot = gr.Chatbot(
        label="Chat", height=480, elem_id="chat-chatbot", buttons=["copy", "copy_all"],
        placeholder="Pick a model and say something.",
    )
    with gr.Row():
        textbox = gr.Textbox(
            show_label=False, placeholder="Type a message and press Enter", scale=6, elem_id="chat-input"
        )
        send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
        stop = gr.Button("Stop", variant="stop", scale=1, elem_id="chat-stop")
    with gr.Row():
        upvote = gr.Button("Upvote", interactive=False, elem_id="chat-upvote")
        downvote = gr.Button("Downvote", interactive=False, elem_id="chat-downvote")
        flag = gr.Button("Flag", interactive=False, elem_id="chat-flag")
        regenerate = gr.Button("Regenerate", elem_id="chat-regenerate")
        clear = gr.Button("Clear", elem_id="chat-clear")
    system = gr.Textbox(label="System prompt", placeholder="(optional)", lines=2, elem_id="chat-system")
    temperature, top_p, max_tokens = params_block(ctx)
    conv_id = gr.State(None)
    go = gr.State(False)  # whether the step before a reply accepted the request
    vote_buttons = [upvote, downvote, flag]

    def add_user(text: str, history: list[dict[str, Any]], model_name: str | None):
        # A toast rather than gr.Error: an error would paint "Error" badges over the chat.
        problem = "No model selected: is the API serving any model?" if not model_name else (
            "Type a message first." if not text.strip() else None)
        if problem:
            gr.Warning(problem)
            return gr.skip(), gr.skip(), False
        return "", normalize(history) + [{"role": "user", "content": text}], True

    async def reply(
        go: bool, model_name: str, system_prompt: str, temp: float, tp: float, max_tok: float,
        history: list[dict[str, Any]], conversation_id: str | None,
    ) -> AsyncIterator[Any]:
        if not go:
            yield (gr.skip(),) * 5
            return
        history = normalize(history)
        conversation_id = conversation_id or uuid.uuid4().hex
        params = GenParams(temperature=float(temp), top_p=float(tp), max_tokens=int(max_tok))
        messages = to_openai(history, system_prompt)
        answer = {"role": "assistant", "content": ""}
        history.append(answer)
        disabled = [gr.update(interactive=False)] * 3
        failed = False
        try:
            yield history, conversation_id, *disabled
            async for delta in ctx.client.stream_chat(model_name, messages, params):
                answer["content"] += delta
                yield history, conversation_id, *disabled
        except FleetchatError as exc:
            failed = True
            if not answer["content"]:
                history.pop()
            history.append(error_message(str(exc)))
            gr.Warning(str(exc))
        finally:
            # Also on Stop: the partial reply is kept, in the page and in the database.
            saved = [m for m in history if m is not answer or m["content"]]
            await ctx.save_conversation(
                conversation_id, mode="chat", model=model_name,
                messages=to_openai(saved, system_prompt), gen_params=params.as_dict(),
            )
        yield history, conversation_id, *[gr.update(interactive=not failed)] * 3

    def regenerate_prep(history: list[dict[str, Any]], model_name: str | None):
        history = drop_last_reply(normalize(history))
        problem = "Nothing to regenerate yet." if not history else (
            "No model selected." if not model_name else None)
        if problem:
            gr.Warning(problem)
            return gr.skip(), False
        return history, True

    def make_vote(kind: str):
        async def vote(model_name: str, conversation_id: str | None):
            if not conversation_id:
                gr.Warning("Nothing to vote on yet.")
                return [gr.skip()] * 3
            await ctx.add_vote(kind, mode="chat", model_a=model_name, conversation_a=conversation_id)
            gr.Info(f"{kind.capitalize()} recorded for {model_name}. Thank you!")
            return [gr.update(interactive=False)] * 3

        return vote

    reply_inputs = [go, model, system, temperature, top_p, max_tokens, chatbot, conv_id]
    reply_outputs = [chatbot, conv_id, *vote_buttons]
    streams = []
    for trigger in (textbox.submit, send.click):
        event = trigger(add_user, [textbox, chatbot, model], [textbox, chatbot, go], queue=False)
        streams.append(event.then(reply, reply_inputs, reply_outputs, concurrency_limit=None))
    regen = regenerate.click(regenerate_prep, [chatbot, model], [chatbot, go], queue=False)
    streams.append(regen.then(reply, reply_inputs, reply_outputs, concurrency_limit=None))
    # Cancelling the task runs the stream's `finally`, which closes the HTTP response to the API.
    stop.click(None, None, None, cancels=streams)
    clear.click(
        lambda: ([], None, "", *[gr.update(interactive=False)] * 3),
        None, [chatbot, conv_id, textbox, *vote_buttons], queue=False, cancels=streams,
    )
    # The chatbot's own trash icon clears the page's copy: start a new conversation too.
    chatbot.clear(lambda: (None, *[gr.update(interactive=False)] * 3), None, [conv_id, *vote_buttons],
                  queue=False, cancels=streams)
    for button, kind in zip(vote_buttons, ("upvote", "downvote", "flag"), strict=True):
        button.click(make_vote(kind), [model, conv_id], vote_buttons)
    return ChatTab(model=model, chatbot=chatbot, textbox=textbox)
