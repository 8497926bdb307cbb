"""fleetchat's Gradio web UI: chat, arena (battle / side-by-side) and a live leaderboard.

It talks only to an OpenAI-compatible API (``fleetchat.webui.client``). Set here, before any
submodule imports gradio: no usage analytics or version checks phoning home, so the UI works offline.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
