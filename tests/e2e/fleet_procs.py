"""Real fleetchat processes on free ports, for e2e tests. Every process is killed at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from serve_process import free_port  # noqa: F401  (re-exported for the fleet tests)


class Proc:
    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCHAT_")}
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "fleetchat.cli.main", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()


class Fleet:
    """Starts controllers and workers; ``close()`` kills them all."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, args, self.log_dir, env)
        self.procs.append(proc)
        return proc

    def controller(self, port: int, *extra: str, name: str = "controller") -> Proc:
        proc = self.start(name, ["controller", "--port", str(port), *extra])
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        return proc

    def worker(self, port: int, controller_port: int, *extra: str, name: str | None = None, env=None) -> Proc:
        args = ["worker", "--port", str(port), "--controller-address", f"http://127.0.0.1:{controller_port}", *extra]
        return self.start(name or f"worker-{port}", args, env)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()


def wait_http(url: str, proc: Proc | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise AssertionError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not come up in {timeout}s" + (f":\n{proc.log()}" if proc else ""))


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition") -> float:
    """Poll ``predicate`` until true; returns the seconds it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return time.monotonic() - t0
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s")
