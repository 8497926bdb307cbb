"""The web UI store on a real SQLite file: write, close, reopen, read back."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from fleetchat.errors import InvalidParameterError
from fleetchat.webui.store import Store, normalize_db_url


def test_conversations_and_votes_survive_reopen(tmp_path):
    url = f"sqlite:///{tmp_path / 'sub' / 'webui.db'}"
    store = Store(url)
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello **there**"}]
    store.save_conversation("c1", mode="chat", model="m1", messages=msgs[:1], gen_params={"temperature": 0.7})
    store.save_conversation("c1", mode="chat", model="m1", messages=msgs, gen_params={"temperature": 0.7})
    store.save_conversation("c2", mode="battle", model="m2", messages=msgs)
    v1 = store.add_vote("upvote", mode="chat", model_a="m1", conversation_a="c1")
    v2 = store.add_vote(
        "leftvote", mode="battle", model_a="m1", model_b="m2", conversation_a="c3", conversation_b="c2"
    )
    assert v2 > v1
    store.close()

    assert (tmp_path / "sub" / "webui.db").stat().st_size > 0
    reopened = Store(url)
    conv = reopened.get_conversation("c1")
    assert conv is not None and conv.messages == msgs and conv.gen_params == {"temperature": 0.7}
    assert conv.updated_at >= conv.created_at
    assert reopened.get_conversation("nope") is None
    assert {c.id for c in reopened.list_conversations()} == {"c1", "c2"}
    assert [c.id for c in reopened.list_conversations(mode="battle")] == ["c2"]
    all_votes = reopened.list_votes()
    assert [(v.kind, v.model_a, v.model_b) for v in all_votes] == [("upvote", "m1", None), ("leftvote", "m1", "m2")]
    assert [v.kind for v in reopened.list_votes(modes=("battle",))] == ["leftvote"]
    reopened.close()

    # The file really is a SQLite database with our tables, readable by anything.
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from votes")).scalar() == 2
    engine.dispose()


def test_bad_votes_rejected(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'w.db'}")
    with pytest.raises(InvalidParameterError):
        store.add_vote("leftvote", mode="battle", model_a="m1")
    with pytest.raises(InvalidParameterError):
        store.add_vote("upvote", mode="chat", model_a="m1", model_b="m2")
    with pytest.raises(InvalidParameterError):
        store.add_vote("superlike", mode="chat", model_a="m1")
    assert store.list_votes() == []
    store.close()


def test_sqlite_home_path_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    url = normalize_db_url("sqlite:///~/.local/share/fleetchat/webui.db")
    assert url == f"sqlite:///{tmp_path}/.local/share/fleetchat/webui.db"
    assert (tmp_path / ".local/share/fleetchat").is_dir()
    assert normalize_db_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"


def test_unopenable_database_is_a_clear_error():
    with pytest.raises(InvalidParameterError, match="cannot open database"):
        Store("nosuchdialect://x/y")
