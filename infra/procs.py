"""Start, wait for and stop the local service processes of the embedded stack."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

# Ports for our listeners come from below the kernel's ephemeral range (32768+ by default):
# a port the kernel hands out for outgoing connections can be taken by any Kafka client
# between the moment we pick it and the moment a service binds it.
_LISTEN_PORTS = (20000, 32000)
# Ports this process handed out: a port picked for a service that binds it seconds later
# (a Kafka controller, a registry still starting) is free until then, and a second pick must
# not get it (seen in CI: the registry and the broker's controller drew the same port).
_GIVEN: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``, outside the ephemeral range, and never
    handed out before by this process."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(*_LISTEN_PORTS)
        if port in _GIVEN:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            _GIVEN.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # crowded: any port
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    """Block until something accepts TCP connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing listening on {host}:{port} after {timeout:.0f}s") from None
            time.sleep(0.05)


class ManagedProcess:
    """A child service process that listens on one TCP port.

    Output goes to ``log_path`` so a failed start can be explained. ``stop()`` sends SIGTERM
    and escalates to SIGKILL; the process runs in its own session so a Ctrl-C in the parent's
    terminal does not race our own shutdown.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        host: str,
        port: int,
        log_path: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.host = host
        self.port = port
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 20.0) -> Self:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        full_env = {**os.environ, **(self.env or {})}
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )
        log.close()
        try:
            deadline = time.monotonic() + timeout
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with {self.proc.returncode} during start; "
                        f"see {self.log_path}:\n{self.tail_log()}"
                    )
                try:
                    wait_for_port(self.host, self.port, timeout=0.2)
                    return self
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise
        except BaseException:
            self.stop()
            raise

    def tail_log(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def python_module_argv(module: str, *args: str) -> list[str]:
    """argv that runs ``python -m module args...`` with this interpreter."""
    return [sys.executable, "-m", module, *args]
