"""`python -m registry_service.users` as an operator runs it: a real process on the real database."""

from __future__ import annotations

import uuid

import psycopg

from tests.test_key_revocation import users_command


def test_create_records_a_valid_email_and_list_shows_it_with_key_use(database_url: str, registry: object) -> None:
    username = f"mail-{uuid.uuid4().hex[:8]}"
    created = users_command(database_url, "create", username, "--role", "reader", "--email", f"{username}@example.org")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("tdk_")
    listed = users_command(database_url, "list")
    line = next(line for line in listed.stdout.splitlines() if line.startswith(username + " "))
    assert f"{username}@example.org" in line
    assert "never used" in line
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE api_keys SET last_used_at = '2026-03-04 05:06:00+00' WHERE user_id ="
            " (SELECT user_id FROM users WHERE username = %s)",
            (username,),
        )
    listed = users_command(database_url, "list")
    line = next(line for line in listed.stdout.splitlines() if line.startswith(username + " "))
    assert "last used 2026-03-04" in line


def test_create_refuses_a_malformed_email_and_stores_nothing(database_url: str, registry: object) -> None:
    username = f"mail-{uuid.uuid4().hex[:8]}"
    for email in ("not-an-email", "two@@example.org", "a b@example.org", "x@localhost", "x@" + "d" * 260 + ".org"):
        refused = users_command(database_url, "create", username, "--role", "reader", "--email", email)
        assert refused.returncode == 2, email
        assert "email must look like" in refused.stderr
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM users WHERE username = %s", (username,)).fetchone() == (0,)


def test_disable_names_the_keys_it_revoked(database_url: str, registry: object) -> None:
    username = f"mail-{uuid.uuid4().hex[:8]}"
    assert users_command(database_url, "create", username, "--role", "trainer").returncode == 0
    assert users_command(database_url, "issue-key", username).returncode == 0
    disabled = users_command(database_url, "disable", username)
    assert disabled.returncode == 0, disabled.stderr
    assert "2 key(s) revoked" in disabled.stdout
    assert users_command(database_url, "disable", "nobody-" + username).returncode == 2
