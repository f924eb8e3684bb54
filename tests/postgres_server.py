"""A real PostgreSQL (Debian's package) on 127.0.0.1 in a temporary data dir, stopped by PID.

The server refuses to run as root: as root, initdb and postgres run as the `postgres` user
(runuser), in a directory that user owns."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.redis_server import free_port


def binary(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[-1:]), None
    )
    if found is None:
        raise RuntimeError(f"no {name}: apt-get install -y postgresql (.ci/run does)")
    return found


class PostgresServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="router-pg-"))
        self.data = self.root / "data"
        self._as_root = os.geteuid() == 0
        self.process: subprocess.Popen[bytes] | None = None
        self._initialised = False

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if self._as_root else list(args)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://router@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresServer:
        if not self._initialised:
            if self._as_root:
                shutil.chown(self.root, "postgres", "postgres")
            subprocess.run(
                self._cmd(binary("initdb"), "-D", str(self.data), "-U", "router",
                          "--auth=trust", "-E", "UTF8", "--no-sync"),
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip
            self._initialised = True
        self.process = subprocess.Popen(
            self._cmd(binary("postgres"), "-D", str(self.data), "-p", str(self.port),
                      "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                      "-c", f"unix_socket_directories={self.root}"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        import psycopg

        ends = time.monotonic() + 30
        while time.monotonic() < ends:
            try:
                psycopg.connect(self.url(), connect_timeout=1).close()
                return self
            except psycopg.OperationalError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"postgres did not start on port {self.port}")

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown: SIGINT to the postmaster, by the PID in its postmaster.pid (runuser,
        its parent as root, does not pass signals on), then wait for it to go."""
        pid_file = self.data / "postmaster.pid"
        if self.process is not None and self.process.poll() is None and pid_file.exists():
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGINT)
            ends = time.monotonic() + 30
            while time.monotonic() < ends:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
