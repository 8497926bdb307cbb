"""UiContext: the explicit dependencies every tab of the web UI is built with (no module globals)."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

from fleetchat.webui.client import ChatClient, GenParams
from fleetchat.webui.settings import WebSettings
from fleetchat.webui.store import Store


@dataclass
class UiContext:
    settings: WebSettings
    client: ChatClient
    store: Store
    rng: random.Random = field(default_factory=random.Random)

    def default_params(self) -> GenParams:
        return GenParams(max_tokens=self.settings.default_max_tokens)

    async def save_conversation(self, conversation_id: str, **kwargs: Any) -> None:
        """Store a conversation off the event loop (the database driver is synchronous)."""
        await asyncio.to_thread(self.store.save_conversation, conversation_id, **kwargs)

    async def add_vote(self, kind: str, **kwargs: Any) -> int:
        return await asyncio.to_thread(self.store.add_vote, kind, **kwargs)
