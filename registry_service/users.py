"""`python -m registry_service.users`: users, roles and API keys.

    python -m registry_service.users create alice --role admin --email alice@example.org  # prints alice's first key
    python -m registry_service.users issue-key alice              # another key
    python -m registry_service.users list                         # emails, keys, when each was last used
    python -m registry_service.users revoke <key_id>
    python -m registry_service.users disable alice                # and revokes every key of alice
    python -m registry_service.users ensure dev --role admin --key-file .data/dev-api-key

An operator's command against the registry database (DATABASE_URL, or the
embedded server of `make run`). A key is printed once and stored only as its
SHA-256; losing it means issuing a new one.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import secrets
import sys
import uuid
from pathlib import Path

import psycopg

from registry_service.backup import BackupError, database_url
from taxidriver.access import ROLE_NAMES

KEY_PREFIX = "tdk_"
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")
# One @, no spaces, a dot in the domain: catches typos, not a full RFC 5322 parser.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
MAX_EMAIL_CHARS = 255


class UserError(RuntimeError):
    """A user command could not be carried out; the message says why."""


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_user(conn: psycopg.Connection, username: str, role: str, email: str | None = None) -> uuid.UUID:
    if not _USERNAME.match(username):
        raise UserError("username must be 1-100 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit")
    if role not in ROLE_NAMES:
        raise UserError(f"role must be one of {', '.join(ROLE_NAMES)}")
    if email is not None and (len(email) > MAX_EMAIL_CHARS or not _EMAIL.match(email)):
        raise UserError(f"email must look like name@example.org (at most {MAX_EMAIL_CHARS} characters), got {email!r}")
    user_id = uuid.uuid4()
    try:
        conn.execute(
            "INSERT INTO users (user_id, username, email, role) VALUES (%s, %s, %s, %s)",
            (user_id, username, email, role),
        )
    except psycopg.errors.UniqueViolation as exc:
        raise UserError(f"user {username!r} already exists") from exc
    return user_id


def issue_key(conn: psycopg.Connection, username: str) -> tuple[uuid.UUID, str]:
    row = conn.execute("SELECT user_id FROM users WHERE username = %s", (username,)).fetchone()
    if row is None:
        raise UserError(f"no user {username!r}")
    api_key = new_key()
    key_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO api_keys (key_id, user_id, key_sha256, key_prefix) VALUES (%s, %s, %s, %s)",
        (key_id, row[0], hash_key(api_key), api_key[: len(KEY_PREFIX) + 6]),
    )
    return key_id, api_key


def disable_user(conn: psycopg.Connection, username: str) -> int:
    """Disable the user and revoke its keys, in one transaction; returns the keys revoked.

    The registry's triggers (migration 0013) tell the gateways at once, so no
    cached answer keeps a key alive.
    """
    with conn.transaction():
        row = conn.execute("UPDATE users SET disabled = true WHERE username = %s RETURNING user_id", (username,))
        found = row.fetchone()
        if found is None:
            raise UserError(f"no user {username!r}")
        return conn.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE user_id = %s AND revoked_at IS NULL", (found[0],)
        ).rowcount


def ensure_user_with_key(conn: psycopg.Connection, username: str, role: str) -> str:
    """The user (created if missing, role set) and a fresh key for it: what `make run` prints."""
    with conn.transaction():
        exists = conn.execute("SELECT 1 FROM users WHERE username = %s", (username,)).fetchone()
        if exists:
            conn.execute("UPDATE users SET role = %s, disabled = false WHERE username = %s", (role, username))
        else:
            create_user(conn, username, role)
        return issue_key(conn, username)[1]


def _write_secret(path: Path, text: str) -> None:
    """Written whole (rename) and readable by its owner only, from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(partial, 0o600)
    os.replace(partial, path)


def ensure_key_file(conn: psycopg.Connection, username: str, role: str, key_file: Path) -> tuple[str, bool]:
    """The user (created if missing, role set, enabled) and one active key kept in `key_file`.

    The key already in the file is reused while it is an active key of this user;
    otherwise a new key is issued, written to the file (0600) before the
    transaction commits, and the file's previous key is revoked. Returns the key
    and whether it is new. This is what `make run` calls at every start, so the
    dev user does not collect one more active admin key per start.
    """
    previous = key_file.read_text().strip() if key_file.is_file() else ""
    with conn.transaction():
        exists = conn.execute("SELECT 1 FROM users WHERE username = %s", (username,)).fetchone()
        if exists:
            conn.execute("UPDATE users SET role = %s, disabled = false WHERE username = %s", (role, username))
        else:
            create_user(conn, username, role)
        if previous:
            active = conn.execute(
                """
                SELECT 1 FROM api_keys k JOIN users u USING (user_id)
                WHERE k.key_sha256 = %s AND u.username = %s AND k.revoked_at IS NULL
                """,
                (hash_key(previous), username),
            ).fetchone()
            if active:
                os.chmod(key_file, 0o600)
                return previous, False
            conn.execute(
                "UPDATE api_keys SET revoked_at = now() WHERE key_sha256 = %s AND revoked_at IS NULL",
                (hash_key(previous),),
            )
        _, api_key = issue_key(conn, username)
        _write_secret(key_file, api_key + "\n")
    return api_key, True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m registry_service.users", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a user and print its first API key")
    create.add_argument("username")
    create.add_argument("--role", choices=ROLE_NAMES, required=True)
    create.add_argument("--email", help="contact address, validated (name@example.org)")
    issue = commands.add_parser("issue-key", help="print a new API key for a user")
    issue.add_argument("username")
    commands.add_parser("list", help="users, roles and their keys")
    revoke = commands.add_parser("revoke", help="revoke an API key by its id")
    revoke.add_argument("key_id")
    disable = commands.add_parser("disable", help="disable a user and revoke its keys at once")
    disable.add_argument("username")
    ensure = commands.add_parser(
        "ensure", help="make sure a user exists with a role and an active key kept in a file (0600), reused"
    )
    ensure.add_argument("username")
    ensure.add_argument("--role", choices=ROLE_NAMES, required=True)
    ensure.add_argument("--key-file", type=Path, required=True, help="where the key is kept (never printed)")
    args = parser.parse_args(argv)
    try:
        with psycopg.connect(database_url(), autocommit=True) as conn:
            if args.command == "create":
                with conn.transaction():
                    create_user(conn, args.username, args.role, args.email)
                    key_id, api_key = issue_key(conn, args.username)
                print(f"user {args.username} ({args.role}) created; key {key_id}:\n{api_key}")
            elif args.command == "issue-key":
                key_id, api_key = issue_key(conn, args.username)
                print(f"key {key_id} for {args.username}:\n{api_key}")
            elif args.command == "list":
                rows = conn.execute(
                    """
                    SELECT u.username, u.email, u.role, u.disabled, k.key_id, k.key_prefix, k.created_at,
                           k.revoked_at, k.last_used_at
                    FROM users u LEFT JOIN api_keys k USING (user_id)
                    ORDER BY u.username, k.created_at
                    """
                ).fetchall()
                for username, email, role, disabled, key_id, prefix, created, revoked, used in rows:
                    state = "disabled" if disabled else "active"
                    key = f"{key_id} {prefix}… created {created:%Y-%m-%d}" if key_id else "no keys"
                    if revoked:
                        key += " REVOKED"
                    # Use is recorded at most once a minute per key (registry_service/auth.py).
                    key += f" last used {used:%Y-%m-%d %H:%M%z}" if used else " never used"
                    print(f"{username:20} {email or '-':30} {role:8} {state:8} {key}")
            elif args.command == "revoke":
                try:
                    key_id = uuid.UUID(args.key_id)
                except ValueError as exc:
                    raise UserError(f"key_id must be a UUID, got {args.key_id!r}") from exc
                updated = conn.execute(
                    "UPDATE api_keys SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL", (key_id,)
                ).rowcount
                if not updated:
                    raise UserError(f"no active key {args.key_id}")
                print(f"key {args.key_id} revoked")
            elif args.command == "disable":
                revoked = disable_user(conn, args.username)
                print(f"user {args.username} disabled; {revoked} key(s) revoked")
            elif args.command == "ensure":
                _, issued = ensure_key_file(conn, args.username, args.role, args.key_file)
                print(f"{'new key written to' if issued else 'reusing the active key in'} {args.key_file}")
    except (UserError, BackupError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
