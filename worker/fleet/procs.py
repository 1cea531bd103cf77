"""Child processes of the launcher: each in its own session (process group), dying with the launcher.

SGLang forks schedulers and detokenizers, so signals go to the whole group. A child gets its own session so a
Ctrl-C in the terminal reaches only the launcher, which then drains in order (workers first, servers last). On
Linux each child also asks the kernel for SIGTERM when the launcher dies (``PR_SET_PDEATHSIG``), so a killed
launcher leaves no orphan holding a GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from worker.fleet.launcher import Command

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        ctypes.CDLL(libc_name, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """One supervised process (a server or a worker)."""

    def __init__(self, name: str, command: Command, *, log_dir: Path | None = None) -> None:
        self.name = name
        self.command = command
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.starts = 0
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        out: IO[bytes] | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = (self.log_dir / f"{self.name}.log").open("ab")
        self._close_log()
        self._log = out
        self.proc = subprocess.Popen(
            self.command.argv,
            env={**os.environ, **self.command.env},
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509 - no threads yet
        )
        self.started_at = time.monotonic()
        self.starts += 1

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def send(self, sig: int) -> None:
        """Send ``sig`` to the child's process group."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def wait(self, timeout_s: float) -> bool:
        """True when the child exited within ``timeout_s``."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout=max(timeout_s, 0.0))
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self, grace_s: float, sig: int = signal.SIGTERM) -> int | None:
        """``sig``, then SIGKILL to the group if it is still there after ``grace_s``."""
        self.send(sig)
        if not self.wait(grace_s):
            self.send(signal.SIGKILL)
            self.wait(10)
        self._reap_group()
        self._close_log()
        return self.returncode

    def _reap_group(self) -> None:
        """Kill what the child left behind in its group (e.g. SGLang scheduler processes)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
