"""create_app: the fleetchat web UI as a ``gr.Blocks`` built from explicit dependencies.

Tabs: Chat, Arena (battle), Arena (side-by-side), Leaderboard. The model lists of every tab follow
``GET /v1/models`` on a timer (and on page load), so models that start or stop show up without a
restart; a status line says when the API cannot be reached.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from fleetchat.errors import FleetchatError
from fleetchat.webui.arena import build_arena_tab
from fleetchat.webui.chat import build_chat_tab
from fleetchat.webui.context import UiContext
from fleetchat.webui.leaderboard import build_leaderboard_tab

CSS = """
#api-status p { margin: 0; }
footer { display: none !important; }
"""


def status_text(models: list[str] | None, error: str | None, base_url: str) -> str:
    if error:
        return f"**API unavailable:** {error}"
    names = ", ".join(f"`{m}`" for m in models or []) or "no models yet"
    return f"API `{base_url}` · serving {len(models or [])}: {names}"


def create_app(ctx: UiContext) -> gr.Blocks:
    """Build the Blocks app. Launch with :func:`launch_kwargs` (theme, CSS, offline settings)."""
    with gr.Blocks(title=ctx.settings.title, analytics_enabled=False) as demo:
        with gr.Row():
            gr.Markdown(f"## {ctx.settings.title}")
            status = gr.Markdown("Connecting to the API…", elem_id="api-status")
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Chat", id="chat", elem_id="tab-chat"):
                chat = build_chat_tab(ctx)
            with gr.Tab("Arena (battle)", id="battle", elem_id="tab-battle"):
                battle = build_arena_tab(ctx, anonymous=True)
            with gr.Tab("Arena (side-by-side)", id="side_by_side", elem_id="tab-side-by-side"):
                side = build_arena_tab(ctx, anonymous=False)
            with gr.Tab("Leaderboard", id="leaderboard", elem_id="tab-leaderboard") as board:
                build_leaderboard_tab(ctx, board)
        known = gr.State(None)  # the last model list this page saw: skip updates when unchanged
        timer = gr.Timer(ctx.settings.model_refresh_seconds)

        tabs = [chat, battle, side]
        inputs = [known] + [c for t in tabs for c in t.model_inputs]
        outputs = [known, status] + [c for t in tabs for c in t.model_outputs]

        async def refresh(last: Any, *current: Any):
            try:
                models, error = await ctx.client.list_models(), None
            except FleetchatError as exc:
                models, error = [], str(exc)
            seen = (tuple(models), error)
            if last is not None and tuple(last[0]) == seen[0] and last[1] == error:
                return [gr.skip()] * len(outputs)
            updates: list[Any] = [seen, status_text(models, error, ctx.client.base_url)]
            offset = 0
            for tab in tabs:
                n = len(tab.model_inputs)
                updates += tab.models_changed(models, *current[offset:offset + n])
                offset += n
            return updates

        demo.load(refresh, inputs, outputs, show_progress="hidden")
        timer.tick(refresh, inputs, outputs, show_progress="hidden")
    return demo


def launch_kwargs(ctx: UiContext) -> dict[str, Any]:
    """Arguments for ``demo.launch``: bind where configured, no SSR/MCP/PWA, nothing fetched from a CDN."""
    return {
        "server_name": ctx.settings.host,
        "server_port": ctx.settings.port,
        "ssr_mode": False,
        "mcp_server": False,
        "pwa": False,
        "show_error": True,
        "share": False,
        "footer_links": [],
        "theme": gr.themes.Default(),  # its fonts are bundled (LocalFont), not Google Fonts
        "css": CSS,
    }
