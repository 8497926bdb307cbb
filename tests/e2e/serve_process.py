"""A real ``fleetchat serve`` process on free ports, for the e2e tests of the API and the benchmark."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive free ports (workers count up from --worker-port)."""
    for _ in range(200):
        base = free_port()
        if base + count >= 65535:
            continue
        try:
            socks = []
            for p in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no run of free ports found")


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class ServeProcess:
    proc: subprocess.Popen
    api_url: str
    worker_urls: list[str]
    controller_url: str
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()


def start_serve(args: list[str], n_workers: int, *, timeout: float = 600.0, wait: bool = True) -> ServeProcess:
    """Start ``fleetchat serve ARGS`` on free ports; with ``wait``, return once it says it is ready."""
    controller, api = free_port(), free_port()
    workers = free_port_run(max(1, n_workers))
    argv = [sys.executable, "-m", "fleetchat.cli.main", "serve", "--no-web", "--controller-port", str(controller),
            "--worker-port", str(workers), "--api-port", str(api), *args]
    # its own session, so that a stray signal to our group never reaches it, and cleanup can use killpg
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    sp = ServeProcess(proc, f"http://127.0.0.1:{api}/v1",
                      [f"http://127.0.0.1:{workers + i}" for i in range(n_workers)],
                      f"http://127.0.0.1:{controller}")
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sp.lines.append(line.rstrip())
            if "fleetchat is ready" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if wait:
        deadline = time.monotonic() + timeout
        while not ready.wait(0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                sp.stop()
                raise RuntimeError(f"fleetchat serve did not become ready:\n{sp.output}")
    return sp
