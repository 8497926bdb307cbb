"""Child processes of ``fleetchat serve``: start, watch, report and stop them, leaving no orphans.

Each child is ``python -m fleetchat.cli.main <command> ...`` in its own session (so a Ctrl-C in the
terminal reaches only ``serve``, which then stops the children in order), with stdout and stderr in a
log file. On Linux each child also gets ``PR_SET_PDEATHSIG=SIGTERM``: if ``serve`` itself is killed
hard, the kernel stops the children. :meth:`Supervisor.stop_all` sends SIGTERM to every child's
process group in reverse start order, waits, then SIGKILLs whatever is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str  # "controller", "worker smollm2", "api", "web"
    argv: list[str]
    log_path: Path
    url: str = ""
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    log_file: object = field(default=None, repr=False)
    restarts: list[float] = field(default_factory=list)  # when it was restarted (monotonic)
    abandoned: bool = False  # died too often: left stopped, no longer checked

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def exit_code(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty log)"


class ChildFailed(Exception):
    def __init__(self, child: Child) -> None:
        super().__init__(f"{child.name} exited with code {child.exit_code()}")
        self.child = child


class Supervisor:
    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.children: list[Child] = []

    def start(self, name: str, command: str, args: list[str], url: str = "") -> Child:
        slug = name.replace(" ", "-").replace("/", "_")
        same = sum(1 for c in self.children if c.log_path.stem.split("#")[0] == slug)
        log_name = f"{slug}#{same + 1}.log" if same else f"{slug}.log"  # two workers of one model
        child = Child(name, [sys.executable, "-m", "fleetchat.cli.main", command, *args],
                      self.log_dir / log_name, url)
        self._spawn(child)
        self.children.append(child)
        return child

    def _spawn(self, child: Child) -> None:
        if child.log_file is None:
            child.log_file = open(child.log_path, "ab")  # noqa: SIM115 - closed in stop_all
        child.proc = subprocess.Popen(
            child.argv, stdin=subprocess.DEVNULL, stdout=child.log_file, stderr=subprocess.STDOUT,
            env=self.env, start_new_session=True, preexec_fn=_die_with_parent,
        )
        child.started_at = time.monotonic()

    def restart(self, child: Child, *, max_restarts: int = 5, window: float = 600.0) -> bool:
        """Start a dead child again with the same command; False (and abandon it) past
        ``max_restarts`` restarts within ``window`` seconds, so a crash loop does not spin forever."""
        now = time.monotonic()
        child.restarts = [t for t in child.restarts if now - t < window]
        if len(child.restarts) >= max_restarts:
            child.abandoned = True
            return False
        child.restarts.append(now)
        self._spawn(child)
        return True

    def check(self) -> None:
        """Raise ChildFailed for the first child that is no longer running."""
        for child in self.children:
            if not child.abandoned and child.exit_code() is not None:
                raise ChildFailed(child)

    def wait_until(self, ready: Callable[[], bool], timeout: float, progress: Callable[[float], None],
                   every: float = 5.0, poll: float = 0.25) -> bool:
        """Poll ``ready`` until true; check the children between polls; report progress now and then."""
        start = time.monotonic()
        next_report = start + every
        while True:
            self.check()
            if ready():
                return True
            now = time.monotonic()
            if now - start > timeout:
                return False
            if now >= next_report:
                progress(now - start)
                next_report = now + every
            time.sleep(poll)

    def stop_all(self, grace: float = 10.0) -> None:
        for child in reversed(self.children):
            if child.proc and child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in reversed(self.children):
            if child.proc is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for child in self.children:
            if child.proc is None:
                continue
            # the group too: anything the child started (and its leader, if it ignored SIGTERM)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=5)
            if child.log_file is not None:
                child.log_file.close()  # type: ignore[attr-defined]
