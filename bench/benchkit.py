"""Shared by the benchmarks: the indexer and ``python -m service`` as subprocesses.

Import it as a sibling (``from benchkit import ...``): running ``python bench/x.py`` puts
bench/ on sys.path. The start and stop of the server are the service's own start-up helpers
(service/startup.py), which the demo uses too.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from service import startup


def run_indexer(catalog: Path, checkpoint: Path, out: Path, *extra: str) -> str:
    """``python -m indexer`` (the one-shot job, no decode workers, no progress bar); its
    output. RuntimeError with that output when it fails."""
    cmd = startup.indexer_command(catalog, checkpoint, out, update=False,
                                  options=("--workers", "0", "--no-progress", *extra))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{startup.shown(cmd)} failed ({proc.returncode}):\n"
                           f"{proc.stdout}\n{proc.stderr}")
    return proc.stdout


class ServerProcess:
    """``python -m service`` on a free loopback port (``.url``, ``.proc``) with ``env`` on
    top of this environment, its log in ``log_dir``; a context manager that starts and
    stops it."""

    def __init__(self, env: dict[str, str], log_dir: Path | None = None) -> None:
        self.port = startup.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "ASEN_HOST": "127.0.0.1", "ASEN_PORT": str(self.port),
                    "ASEN_LOG_LEVEL": "warning", **env}
        log_dir = log_dir or Path(tempfile.mkdtemp(prefix="asen-server-"))
        self.log_path = log_dir / f"server-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(startup.service_command(), env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT)
        return self

    def wait(self, timeout: float = startup.READY_TIMEOUT_S) -> dict:
        """Until /readyz answers 200 (its JSON); RuntimeError with the server's log if not."""
        assert self.proc is not None, "not started"
        try:
            return startup.wait_ready(self.url, self.proc, timeout)
        except startup.StartupError as exc:
            log = self.log_path.read_text(errors="replace")
            raise RuntimeError(f"{exc}:\n{log[-3000:]}") from None

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            startup.stop(self.proc)
