"""The web UI store on a real PostgreSQL server (same code as SQLite; only the URL differs).

Starts a throw-away ``postgres`` on a free port (skipped when the server binaries or the psycopg
driver are not installed).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from fleetchat.webui.ratings import battles_from_votes, leaderboard
from fleetchat.webui.store import Store

psycopg = pytest.importorskip("psycopg")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (shutil.which("initdb") and shutil.which("postgres")), reason="no PostgreSQL server"),
]


def _as_postgres_user() -> dict:
    """PostgreSQL refuses to run as root: drop to the `postgres` user when we are root."""
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam("postgres")
    return {"user": pw.pw_uid, "group": pw.pw_gid}


@pytest.fixture(scope="module")
def pg_url():
    base = Path(tempfile.mkdtemp(prefix="fleetchat-pg-"))
    drop = _as_postgres_user()
    if drop:
        os.chown(base, drop["user"], drop["group"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(["initdb", "-D", str(base / "data"), "-A", "trust", "-U", "fleet", "--no-sync"],
                   check=True, capture_output=True, **drop)
    server = subprocess.Popen(
        ["postgres", "-D", str(base / "data"), "-p", str(port), "-k", str(base),
         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
        stdout=subprocess.DEVNULL, stderr=(base / "pg.log").open("w"), **drop,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(f"host=127.0.0.1 port={port} user=fleet dbname=postgres").close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError((base / "pg.log").read_text()[-2000:]) from None
                time.sleep(0.2)
        yield f"postgresql://fleet@127.0.0.1:{port}/postgres"  # bare URL: psycopg 3 is picked
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


def test_postgres_store_round_trip(pg_url):
    store = Store(pg_url)
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello ünïcode ✓"}]
    store.save_conversation("c1", mode="chat", model="m1", messages=msgs[:1])
    store.save_conversation("c1", mode="chat", model="m1", messages=msgs, gen_params={"top_p": 0.9})
    store.add_vote("upvote", mode="chat", model_a="m1", conversation_a="c1")
    store.add_vote("leftvote", mode="battle", model_a="m1", model_b="m2")
    store.add_vote("tievote", mode="side_by_side", model_a="m2", model_b="m1")
    store.close()

    again = Store(pg_url)
    conv = again.get_conversation("c1")
    assert conv is not None and conv.messages == msgs and conv.gen_params == {"top_p": 0.9}
    kinds = [v.kind for v in again.list_votes()]
    assert kinds == ["upvote", "leftvote", "tievote"]
    rows = leaderboard(battles_from_votes(again.list_votes(modes=("battle",))), rounds=5)
    assert [(r.model, r.battles, r.wins) for r in rows] == [("m1", 1, 1), ("m2", 1, 0)]
    again.close()
