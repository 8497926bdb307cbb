"""The web UI in a real browser (Debian's chromium, headless, driven by Playwright).

Against a real ``fleetchat serve`` with two served models (the embedded SmolLM2 under two names): a chat message streams its reply; one arena
battle is played and voted; the vote shows in the leaderboard (one battle, both models); the vote is
still there after the UI restarts; the page fetches nothing from outside 127.0.0.1. A screenshot of
each tab is saved under ``artifacts/screenshots/``.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from serve_process import free_port
from serve_process import free_port_run as free_ports

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"),
]


def wait_http(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not up after {timeout}s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start(args: list[str], log: Path, url: str, timeout: float, env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    try:
        wait_http(url, proc, timeout, log)
    except BaseException:
        stop(proc)
        raise
    return proc


@dataclass
class Served:
    api_base_url: str
    web_url: str
    names: list[str]
    db: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    """A real `fleetchat serve`: the embedded SmolLM2 twice under two names, with its web UI child."""
    tmp = tmp_path_factory.mktemp("serve")
    names = ["smollm2-a", "smollm2-b"]
    api_port, web_port, controller_port = free_port(), free_port(), free_port()
    db = tmp / "webui.db"
    env = {
        # Read by the `fleetchat web` child that serve starts (serve passes host, port and API URL).
        "FLEETCHAT_WEB_DB_URL": f"sqlite:///{db}",
        "FLEETCHAT_WEB_DEFAULT_MAX_TOKENS": "12",
        "FLEETCHAT_WEB_MODEL_REFRESH_SECONDS": "2",
        "FLEETCHAT_WEB_BOOTSTRAP_ROUNDS": "20",
    }
    args = [
        sys.executable, "-m", "fleetchat.cli.main", "serve",
        *(a for n in names for a in ("--model-path", f"smollm2={n}")),
        "--controller-port", str(controller_port), "--worker-port", str(free_ports(len(names))),
        "--api-port", str(api_port), "--web-port", str(web_port), "--log-dir", str(tmp / "logs"),
    ]
    web_url = f"http://127.0.0.1:{web_port}/"
    proc = start(args, tmp / "serve.log", web_url, timeout=600, env=env)
    yield Served(f"http://127.0.0.1:{api_port}/v1", web_url, names, db)
    stop(proc)


class WebUI:
    def __init__(self, api_base_url: str, db: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.db = db
        self.args = [
            sys.executable, "-m", "fleetchat.cli.main", "web", "--port", str(self.port),
            "--api-base-url", api_base_url, "--db-url", f"sqlite:///{db}",
            "--default-max-tokens", "12", "--model-refresh-seconds", "2", "--bootstrap-rounds", "20",
        ]
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = start(self.args, self.log, self.url, timeout=120)

    def stop(self) -> None:
        if self.proc:
            stop(self.proc)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    pg.outside_requests = []  # everything the page asks of a host other than the UI itself
    pg.on(
        "request",
        lambda r: pg.outside_requests.append(r.url)
        if not r.url.startswith(("http://127.0.0.1", "data:", "blob:")) else None,
    )
    yield pg
    context.close()


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def leaderboard_rows(page) -> dict[str, list[str]]:
    rows = {}
    # Gradio 6's dataframe renders a virtual grid (role=row / role=gridcell) over a hidden sizing table.
    for row in page.locator("#leaderboard-table [role='row'].virtual-row").all():
        cells = [c.strip() for c in row.locator("[role='gridcell']").all_inner_texts()]
        if len(cells) >= 7:
            rows[cells[1]] = cells
    return rows


def test_chat_arena_vote_leaderboard(served, page, tmp_path):
    names = served.names
    page.goto(served.web_url)
    page.wait_for_selector("#api-status :text('serving 2')")
    assert page.locator("#chat-model input").input_value() in names

    # Chat: watch the reply grow in the DOM to see that it streams.
    page.evaluate(
        """() => {
        window.__lens = [];
        const root = document.querySelector('#chat-chatbot');
        new MutationObserver(() => {
            const bots = root.querySelectorAll('[data-testid="bot"]');
            if (bots.length) window.__lens.push(bots[bots.length - 1].innerText.length);
        }).observe(root, {subtree: true, childList: true, characterData: true});
    }"""
    )
    page.fill("#chat-input textarea", "Name three colours.")
    page.press("#chat-input textarea", "Enter")
    page.wait_for_selector("#chat-upvote:not([disabled])")  # enabled when the reply is complete
    reply = page.locator("#chat-chatbot [data-testid='bot']").last.inner_text()
    assert reply.strip() and not reply.startswith("Error")
    growth = sorted({n for n in page.evaluate("window.__lens") if n > 0})
    assert len(growth) >= 2, f"reply did not stream, lengths seen: {growth}"
    page.click("#chat-upvote")
    page.wait_for_selector("#chat-upvote[disabled]")
    shot(page, "chat")

    # Arena (battle): one round, vote, names revealed.
    open_tab(page, "Arena (battle)")
    page.fill("#battle-input textarea", "Say hello.")
    page.press("#battle-input textarea", "Enter")
    page.wait_for_selector("#battle-leftvote:not([disabled])")
    for side in ("a", "b"):
        assert page.locator(f"#battle-chatbot-{side} [data-testid='bot']").last.inner_text().strip()
    labels = [page.locator(f"#battle-chatbot-{s} [data-testid='block-label']").inner_text() for s in "ab"]
    assert [x.strip() for x in labels] == ["Model A", "Model B"]  # anonymous before the vote
    page.click("#battle-leftvote")
    reveal = page.locator("#battle-reveal")
    reveal.locator(":text('Model A:')").wait_for()
    revealed = re.findall(r"Model [AB]: (\S+)", reveal.inner_text())
    assert sorted(revealed) == sorted(names), reveal.inner_text()
    assert page.locator("#battle-leftvote").is_disabled()
    labels = [page.locator(f"#battle-chatbot-{s} [data-testid='block-label']").inner_text() for s in "ab"]
    assert [x.strip() for x in labels] == [f"Model A: {revealed[0]}", f"Model B: {revealed[1]}"]
    shot(page, "arena_battle")

    open_tab(page, "Arena (side-by-side)")
    page.wait_for_function("document.querySelector('#sbs-model-b input').value !== ''")
    chosen = {page.locator(f"#sbs-model-{s} input").input_value() for s in ("a", "b")}
    assert chosen == set(names)
    shot(page, "arena_side_by_side")

    # Leaderboard: computed from the database on tab open.
    open_tab(page, "Leaderboard")
    page.locator("#leaderboard-summary :text('1 battle ')").wait_for()
    rows = leaderboard_rows(page)
    assert set(rows) == set(names), rows
    winner, loser = revealed[0], revealed[1]
    assert rows[winner][6] == "1" and rows[loser][6] == "1"  # battles
    assert rows[winner][7] == "1" and rows[loser][7] == "0"  # wins
    assert float(rows[winner][4]) > float(rows[loser][4])  # BT score
    feedback = page.locator("#leaderboard-feedback").inner_text()
    assert "smollm2" in feedback
    shot(page, "leaderboard")
    assert page.outside_requests == []

    with sqlite3.connect(served.db) as db:
        votes = db.execute("select kind, mode, model_a, model_b from votes order by id").fetchall()
        convs = db.execute("select mode, count(*) from conversations group by mode").fetchall()
    assert [v[:2] for v in votes] == [("upvote", "chat"), ("leftvote", "battle")]
    assert dict(convs) == {"chat": 1, "battle": 2}

    # Nothing lost when the UI restarts: a new `fleetchat web` on the same database shows the vote.
    again = WebUI(served.api_base_url, served.db, tmp_path / "web.log")
    again.start()
    try:
        page.goto(again.url)
        open_tab(page, "Leaderboard")
        page.locator("#leaderboard-summary :text('1 battle ')").wait_for()
        assert set(leaderboard_rows(page)) == set(names)
    finally:
        again.stop()


def test_api_down_then_models_appear_without_restart(page, tmp_path):
    """API down: said in the page. Then a fleet starts at that address: its models show up live."""
    api_port = free_port()
    ui = WebUI(f"http://127.0.0.1:{api_port}/v1", tmp_path / "webui.db", tmp_path / "web.log")
    ui.start()
    fleet = None
    try:
        page.goto(ui.url)
        page.locator("#api-status :text('API unavailable')").wait_for()
        assert "cannot reach the API" in page.locator("#api-status").inner_text()
        open_tab(page, "Arena (battle)")
        page.locator("#battle-notice :text('needs at least two served models')").wait_for()
        page.fill("#battle-input textarea", "hello?")
        page.press("#battle-input textarea", "Enter")
        page.locator(".toast-body:has-text('cannot reach the API')").first.wait_for()
        page.wait_for_timeout(700)  # let the toast finish sliding in before the screenshot
        shot(page, "api_down")

        # A fleet (fake engine: this is about the UI, not the model) starts where the UI looks.
        names = ["fake-a", "fake-b"]
        fleet = start(
            [sys.executable, "-m", "fleetchat.cli.main", "serve", "--engine", "fake",
             *(a for n in names for a in ("--model-path", f"fake-model={n}")),
             "--controller-port", str(free_port()), "--worker-port", str(free_ports(2)),
             "--api-port", str(api_port), "--no-web", "--log-dir", str(tmp_path / "logs")],
            tmp_path / "serve.log", f"http://127.0.0.1:{api_port}/v1/models", timeout=120,
        )
        page.locator("#api-status :text('serving 2')").wait_for()  # same page, no reload
        page.locator("#battle-notice").wait_for(state="hidden")
        page.fill("#battle-input textarea", "hello again")
        page.press("#battle-input textarea", "Enter")
        page.wait_for_selector("#battle-tievote:not([disabled])")
        page.click("#battle-tievote")
        page.locator("#battle-reveal :text('Model A:')").wait_for()
        revealed = re.findall(r"Model [AB]: (\S+)", page.locator("#battle-reveal").inner_text())
        assert sorted(revealed) == names

        stop(fleet)
        page.locator("#api-status :text('API unavailable')").wait_for()  # and gone again
    finally:
        if fleet:
            stop(fleet)
        ui.stop()
