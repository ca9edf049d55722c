"""Servers for the tests: free ports, readiness polling, ``python -m service`` in a
subprocess and the app on a real uvicorn in this process."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from service.startup import free_port, stop
from testkit.indexes import REPO_ROOT


def wait_until_ready(url: str, timeout: float = 90.0, interval: float = 0.2,
                     exited: Callable[[], str | None] | None = None) -> httpx.Response:
    """Poll ``url`` until it answers 200; returns that answer. ``exited`` says why the
    server is gone (None while it runs): polling stops with a RuntimeError at once then.
    TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if exited is not None and (why := exited()) is not None:
            raise RuntimeError(why)
        with contextlib.suppress(httpx.HTTPError):
            resp = httpx.get(url, timeout=5.0)
            if resp.status_code == 200:
                return resp
        time.sleep(interval)
    raise TimeoutError(f"{url} not 200 after {timeout} s")


class ServerProcess:
    """``python -m service`` in a subprocess on a free loopback port (``.url``,
    ``.log()``); a context manager that starts and stops it."""

    def __init__(self, env: dict[str, str], log_dir: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "ASEN_HOST": "127.0.0.1", "ASEN_PORT": str(self.port),
                    "ASEN_LOG_LEVEL": "warning", **env}
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
        log_dir = log_dir or Path(tempfile.mkdtemp(prefix="asen-server-"))
        self.log_path = log_dir / f"server-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> ServerProcess:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO_ROOT,
                                     env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _exited(self) -> str | None:
        if self.proc is not None and self.proc.poll() is not None:
            return f"server exited ({self.proc.returncode}):\n{self.log()}"
        return None

    def wait(self, path: str = "/healthz", timeout: float = 90.0) -> None:
        """Poll ``path`` until it answers 200."""
        try:
            wait_until_ready(self.url + path, timeout, exited=self._exited)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}:\n{self.log()}") from None

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
        if getattr(self, "_log", None) is not None:
            self._log.close()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class InProcessServer:
    """An ASGI ``app`` on a real uvicorn in a thread of this process, on a free loopback
    port (``.url``): the app's objects stay reachable from the test. A context manager that
    waits until ``ready_path`` answers 200."""

    def __init__(self, app: Any, ready_path: str = "/readyz", timeout: float = 90.0):
        import uvicorn

        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._ready = (ready_path, timeout)
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                     log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, name="uvicorn", daemon=True)

    def _exited(self) -> str | None:
        return None if self._thread.is_alive() else "the in-process server stopped"

    def __enter__(self) -> InProcessServer:
        self._thread.start()
        path, timeout = self._ready
        try:
            wait_until_ready(self.url + path, timeout, interval=0.1, exited=self._exited)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
