"""Store: conversations and votes of the web UI in a real database, through SQLAlchemy Core.

SQLite is the default (a file under ``~/.local/share/fleetchat``); any SQLAlchemy URL works through
the same code, e.g. ``postgresql+psycopg://user@host/db`` — only portable Core constructs are used
(no SQLite-only SQL, JSON columns via ``sa.JSON``, upsert as update-then-insert in one transaction).

The engine is synchronous; the UI calls these methods through ``asyncio.to_thread`` so a slow disk or
database never blocks the event loop. Vote kinds follow FastChat's log types so exported data reads
the same: ``upvote``/``downvote``/``flag`` for one model, ``leftvote``/``rightvote``/``tievote``/
``bothbad_vote`` for two.
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from fleetchat.errors import InvalidParameterError

SINGLE_VOTES = ("upvote", "downvote", "flag")
PAIR_VOTES = ("leftvote", "rightvote", "tievote", "bothbad_vote")
MODES = ("chat", "battle", "side_by_side")

_metadata = sa.MetaData()

conversations = sa.Table(
    "conversations",
    _metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("messages", sa.JSON, nullable=False),
    sa.Column("gen_params", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

votes = sa.Table(
    "votes",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.Float, nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("mode", sa.String(16), nullable=False, index=True),
    sa.Column("model_a", sa.String(256), nullable=False),
    sa.Column("model_b", sa.String(256), nullable=True),
    sa.Column("conversation_a", sa.String(64), nullable=True),
    sa.Column("conversation_b", sa.String(64), nullable=True),
)


@dataclass(frozen=True)
class Conversation:
    id: str
    mode: str
    model: str
    messages: list[dict[str, Any]]
    gen_params: dict[str, Any]
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Vote:
    id: int
    created_at: float
    kind: str
    mode: str
    model_a: str
    model_b: str | None
    conversation_a: str | None
    conversation_b: str | None


def normalize_db_url(url: str) -> str:
    """Expand ``~`` and env vars in a SQLite path and create its folder.

    A bare ``postgresql://`` means psycopg2 to SQLAlchemy; when only psycopg 3 is installed it is used.
    Other URLs pass unchanged.
    """
    parsed = make_url(url)
    if parsed.drivername == "postgresql" and _has_module("psycopg") and not _has_module("psycopg2"):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return url
    path = Path(os.path.expandvars(os.path.expanduser(parsed.database)))
    path.parent.mkdir(parents=True, exist_ok=True)
    return parsed.set(database=str(path)).render_as_string(hide_password=False)


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


class Store:
    """Conversations and votes. One instance per UI process; safe to call from worker threads."""

    def __init__(self, db_url: str) -> None:
        try:
            self.url = normalize_db_url(db_url)
            self.engine = sa.create_engine(self.url, future=True, pool_pre_ping=True)
            _metadata.create_all(self.engine)
        except (
            sa.exc.ArgumentError, sa.exc.NoSuchModuleError, sa.exc.OperationalError, OSError, ImportError,
        ) as exc:
            shown = make_url(db_url).render_as_string(hide_password=True) if "://" in db_url else db_url
            raise InvalidParameterError(f"cannot open database {shown!r}: {exc}", param="db_url") from exc

    def close(self) -> None:
        self.engine.dispose()

    # -- conversations -------------------------------------------------------------------------
    def save_conversation(
        self,
        conversation_id: str,
        *,
        mode: str,
        model: str,
        messages: list[dict[str, Any]],
        gen_params: dict[str, Any] | None = None,
    ) -> None:
        """Insert or replace the conversation ``conversation_id`` (its whole message list)."""
        if mode not in MODES:
            raise InvalidParameterError(f"unknown conversation mode {mode!r}", param="mode")
        now = time.time()
        values = {"mode": mode, "model": model, "messages": messages, "gen_params": gen_params or {}}
        with self.engine.begin() as conn:
            result = conn.execute(
                conversations.update()
                .where(conversations.c.id == conversation_id)
                .values(**values, updated_at=now)
            )
            if result.rowcount == 0:
                conn.execute(
                    conversations.insert().values(
                        id=conversation_id, **values, created_at=now, updated_at=now
                    )
                )

    def get_conversation(self, conversation_id: str) -> Conversation | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(conversations).where(conversations.c.id == conversation_id)
            ).first()
        return Conversation(**row._asdict()) if row else None

    def list_conversations(self, *, mode: str | None = None, limit: int = 100) -> list[Conversation]:
        query = sa.select(conversations).order_by(conversations.c.updated_at.desc()).limit(limit)
        if mode:
            query = query.where(conversations.c.mode == mode)
        with self.engine.connect() as conn:
            return [Conversation(**row._asdict()) for row in conn.execute(query)]

    # -- votes ---------------------------------------------------------------------------------
    def add_vote(
        self,
        kind: str,
        *,
        mode: str,
        model_a: str,
        model_b: str | None = None,
        conversation_a: str | None = None,
        conversation_b: str | None = None,
    ) -> int:
        """Record one vote; returns its id. Pair votes need ``model_b``, single votes must not have it."""
        if mode not in MODES:
            raise InvalidParameterError(f"unknown vote mode {mode!r}", param="mode")
        if kind in PAIR_VOTES:
            if not model_b:
                raise InvalidParameterError(f"a {kind} needs two models", param="model_b")
        elif kind in SINGLE_VOTES:
            if model_b:
                raise InvalidParameterError(f"a {kind} is about one model", param="model_b")
        else:
            raise InvalidParameterError(
                f"unknown vote kind {kind!r}; one of {', '.join(SINGLE_VOTES + PAIR_VOTES)}", param="kind"
            )
        with self.engine.begin() as conn:
            result = conn.execute(
                votes.insert().values(
                    created_at=time.time(),
                    kind=kind,
                    mode=mode,
                    model_a=model_a,
                    model_b=model_b,
                    conversation_a=conversation_a,
                    conversation_b=conversation_b,
                )
            )
            return int(result.inserted_primary_key[0])

    def list_votes(self, *, modes: tuple[str, ...] | None = None, kinds: tuple[str, ...] | None = None) -> list[Vote]:
        """Votes in the order they were cast (oldest first), optionally filtered."""
        query = sa.select(votes).order_by(votes.c.created_at, votes.c.id)
        if modes:
            query = query.where(votes.c.mode.in_(modes))
        if kinds:
            query = query.where(votes.c.kind.in_(kinds))
        with self.engine.connect() as conn:
            return [Vote(**row._asdict()) for row in conn.execute(query)]
