"""AIP-160 filters and order_by clauses compiled to parametrised SQL.

User text never reaches the SQL string: field names resolve through a
whitelist to fixed SQL fragments, JSONB paths travel as `text[]` parameters,
and every literal is a parameter. Precedence follows AIP-160: OR binds tighter
than AND (`a AND b OR c` is `a AND (b OR c)`); NOT binds tightest.
"""

from __future__ import annotations

import itertools
import math
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from registry_service import page_tokens
from taxidriver.errors import bad_field
from taxidriver.vocabulary import STATUS_NUMBERS

JSON_GROUPS = (
    "params",
    "training_metrics",
    "test_metrics",
    "system_metrics",
    "learning_stability",
    "brute_force_metrics",
    "improvement_metrics",
)
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_FILTER_CHARS = 4096
MAX_DEPTH = 32


@dataclass(frozen=True)
class Field:
    """A filterable/sortable field: its SQL expression and the type of its values."""

    name: str
    sql: str  # fixed text from this module, or with one %s for a JSONB path parameter
    kind: str  # text | uuid | status | timestamp | number | integer | json | metric
    path: tuple[str, ...] = ()
    nullable: bool = False


COLUMNS: dict[str, Field] = {
    "run_id": Field("run_id", "r.run_id", "uuid"),
    "algorithm": Field("algorithm", "r.algorithm", "text"),
    "status": Field("status", "r.status", "status"),
    "mode": Field("mode", "r.mode", "text"),
    "env_id": Field("env_id", "r.env_id", "text"),
    # Who started the run; "" when unknown (migration 0013 indexes this expression).
    "creator": Field("creator", "COALESCE(r.creator, '')", "text"),
    "create_time": Field("create_time", "r.created_at", "timestamp"),
    "update_time": Field("update_time", "r.updated_at", "timestamp"),
    "execution_time": Field("execution_time", "r.execution_time", "number", nullable=True),
    "episodes_recorded": Field("episodes_recorded", "r.episodes_recorded", "integer"),
    "episodes_planned": Field("episodes_planned", "r.episodes_planned", "integer"),
}

# The seed's test metrics read from their generated columns (migration 0004): indexed, no JSON parsing.
METRICS: dict[str, Field] = {
    "test_metrics.success_rate": Field("test_metrics.success_rate", "r.success_rate", "metric", nullable=True),
    "test_metrics.avg_steps": Field("test_metrics.avg_steps", "r.avg_steps", "metric", nullable=True),
    "test_metrics.avg_reward": Field("test_metrics.avg_reward", "r.avg_reward", "metric", nullable=True),
}

_STATUS_NAMES = frozenset(STATUS_NUMBERS)


def resolve_field(name: str, field_name: str) -> Field:
    """A whitelisted field, or INVALID_ARGUMENT naming `field_name` (filter / order_by)."""
    if name in COLUMNS:
        return COLUMNS[name]
    if name in METRICS:
        return METRICS[name]
    group, _, rest = name.partition(".")
    if group in JSON_GROUPS and rest:
        path = tuple(rest.split("."))
        if len(path) <= 8 and all(_KEY.match(part) for part in path):
            # The group name comes from JSON_GROUPS (ours); the path is a parameter.
            return Field(name, f"(r.{group} #> %s::text[])", "json", path=path, nullable=True)
    raise bad_field(
        field_name,
        f"unknown field {name[:80]!r}; use one of {', '.join(COLUMNS)}, tags, "
        f"or <group>.<key> with group in {', '.join(JSON_GROUPS)}",
    )


# ---------------------------------------------------------------- tokenizer

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<op><=|>=|!=|=|<|>|:)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![A-Za-z0-9_.:-]))
  | (?P<word>[A-Za-z_][A-Za-z0-9_.-]*)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    position: int


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise bad_field("filter", f"unexpected character {text[position]!r} at position {position}")
        kind = match.lastgroup or ""
        if kind != "ws":
            tokens.append(Token(kind, match.group(), position))
        position = match.end()
    return tokens


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


# ---------------------------------------------------------------- parser


@dataclass
class Compiled:
    """A SQL boolean expression and its parameters, in order."""

    sql: str
    params: list[Any] = field(default_factory=list)


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.index = 0
        self.depth = 0

    def peek(self) -> Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> Token:
        token = self.peek()
        if token is None:
            raise bad_field("filter", "unexpected end of filter")
        self.index += 1
        return token

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "word" and token.text == word:
            self.index += 1
            return True
        return False

    def parse(self) -> Compiled:
        compiled = self.expression()
        token = self.peek()
        if token is not None:
            raise bad_field("filter", f"unexpected {token.text[:40]!r} at position {token.position}")
        return compiled

    def expression(self) -> Compiled:
        parts = [self.factor()]
        while self.keyword("AND"):
            parts.append(self.factor())
        return _join(parts, "AND")

    def factor(self) -> Compiled:
        parts = [self.term()]
        while self.keyword("OR"):
            parts.append(self.term())
        return _join(parts, "OR")

    def term(self) -> Compiled:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise bad_field("filter", f"nested deeper than {MAX_DEPTH}")
        try:
            if self.keyword("NOT"):
                inner = self.term()
                return Compiled(f"NOT COALESCE(({inner.sql}), false)", inner.params)
            token = self.peek()
            if token is not None and token.kind == "lparen":
                self.take()
                inner = self.expression()
                closing = self.take()
                if closing.kind != "rparen":
                    raise bad_field("filter", f"expected ')' at position {closing.position}")
                return Compiled(f"({inner.sql})", inner.params)
            return self.comparison()
        finally:
            self.depth -= 1

    def comparison(self) -> Compiled:
        name = self.take()
        if name.kind != "word" or name.text in ("AND", "OR", "NOT"):
            raise bad_field("filter", f"expected a field name at position {name.position}, got {name.text[:40]!r}")
        operator = self.take()
        if operator.kind != "op":
            raise bad_field("filter", f"expected an operator after {name.text[:40]!r} at position {operator.position}")
        value = self.take()
        if value.kind not in ("string", "number", "word"):
            raise bad_field("filter", f"expected a value at position {value.position}")
        return compile_comparison(name.text, operator.text, value)


def all_of(*parts: Compiled) -> Compiled:
    """The conjunction of compiled expressions, their parameters in order."""
    return _join(list(parts), "AND")


def _join(parts: list[Compiled], word: str) -> Compiled:
    if len(parts) == 1:
        return parts[0]
    params: list[Any] = []
    for part in parts:
        params.extend(part.params)
    return Compiled("(" + f" {word} ".join(p.sql for p in parts) + ")", params)


# Integers in filters must fit the int64 of JSON numbers other clients read; floats must be finite.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _literal(token: Token) -> tuple[str, Any]:
    """(type, value) of a literal: number, bool or string (bare words are strings, AIP-160 style)."""
    if token.kind == "number":
        if re.fullmatch(r"[-+]?\d+", token.text):
            integer = int(token.text[:30]) if len(token.text) <= 30 else None
            if integer is None or not INT64_MIN <= integer <= INT64_MAX:
                raise bad_field("filter", f"integer {token.text[:24]}... is out of range (64-bit integers only)")
            return "number", integer
        number = float(token.text)
        if not math.isfinite(number):
            raise bad_field("filter", f"number {token.text[:24]} is out of range (finite doubles only)")
        return "number", number
    if token.kind == "string":
        text = _unquote(token.text)
        if "\x00" in text:
            raise bad_field("filter", f"string at position {token.position} contains a NUL character")
        return "string", text
    if token.text in ("true", "false"):
        return "bool", token.text == "true"
    return "string", token.text


_SQL_OPERATORS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


def parse_timestamp(text: str, field_name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise bad_field(field_name, f"{text[:40]!r} is not an RFC 3339 timestamp") from None
    if moment.tzinfo is None:
        raise bad_field(field_name, f"timestamp {text[:40]!r} needs a time zone (e.g. Z)")
    return moment


def compile_comparison(name: str, operator: str, token: Token) -> Compiled:
    kind, value = _literal(token)
    if name == "tags":
        if operator not in (":", "=") or kind != "string":
            raise bad_field("filter", 'tags are matched with tags:"name" or tags = "name"')
        # The run's own tags column (the union of its annotations' tags, migration 0015), GIN-indexed.
        return Compiled("r.tags @> ARRAY[%s::text]", [value])
    column = resolve_field(name, "filter")
    if operator == ":":
        raise bad_field("filter", f"':' (has) applies to tags only; compare {name[:40]} with =, !=, <, <=, > or >=")
    sql_op = _SQL_OPERATORS[operator]
    if column.kind in ("text", "status", "uuid"):
        if kind != "string":
            raise bad_field("filter", f"{name} compares with a string")
        if column.kind == "status":
            value = value.lower().removeprefix("run_status_")
            if value not in _STATUS_NAMES:
                raise bad_field("filter", f"unknown status {value[:40]!r}")
        if column.kind == "uuid":
            try:
                value = uuid.UUID(value)
            except ValueError:
                raise bad_field("filter", f"run_id {value[:40]!r} is not a UUID") from None
        return Compiled(f"{column.sql} {sql_op} %s", [value])
    if column.kind == "timestamp":
        if kind != "string":
            raise bad_field("filter", f'{name} compares with a quoted timestamp, e.g. "2026-01-01T00:00:00Z"')
        return Compiled(f"{column.sql} {sql_op} %s::timestamptz", [parse_timestamp(value, "filter")])
    if column.kind in ("number", "integer", "metric"):
        if kind != "number":
            raise bad_field("filter", f"{name} compares with a number")
        return Compiled(f"{column.sql} {sql_op} %s", [float(value)])
    # A JSONB path: the literal's type decides how it compares.
    path = list(column.path)
    if operator == "=":
        # Containment of {"a": {"b": value}}: exact (numbers numerically) and served by the GIN index on params.
        nested: Any = value
        for key in reversed(path):
            nested = {key: nested}
        group = name.partition(".")[0]
        return Compiled(f"r.{group} @> %s::jsonb", [Jsonb(nested)])
    if kind == "number":
        return Compiled(f"jsonb_number({column.sql}) {sql_op} %s::float8", [path, float(value)])
    if kind == "bool":
        if operator != "!=":
            raise bad_field("filter", f"booleans compare with = or != only ({name})")
        return Compiled(f"{column.sql} {sql_op} %s::jsonb", [path, Jsonb(value)])
    text_sql = column.sql.replace("#>", "#>>", 1)
    return Compiled(f"{text_sql} {sql_op} %s::text", [path, value])


def compile_filter(text: str) -> Compiled:
    """The WHERE expression of a filter; TRUE for an empty one."""
    if len(text) > MAX_FILTER_CHARS:
        raise bad_field("filter", f"at most {MAX_FILTER_CHARS} characters")
    if not text.strip():
        return Compiled("TRUE")
    return _Parser(text).parse()


def filter_fields(text: str) -> set[str]:
    """The field names a (valid) filter compares: a word followed by an operator."""
    tokens = tokenize(text)
    return {
        token.text for token, following in itertools.pairwise(tokens) if token.kind == "word" and following.kind == "op"
    }


# ---------------------------------------------------------------- ordering and page tokens


@dataclass(frozen=True)
class SortKey:
    field: Field
    descending: bool

    def expression(self) -> tuple[str, list[Any]]:
        params: list[Any] = [list(self.field.path)] if self.field.kind == "json" else []
        return self.field.sql, params


@dataclass
class Ordering:
    keys: list[SortKey]
    text: str

    def order_sql(self) -> Compiled:
        """ORDER BY with NULLs last in both directions, run_id as the final tie-breaker."""
        parts: list[str] = []
        params: list[Any] = []
        for key in self.keys:
            sql, key_params = key.expression()
            direction = "DESC" if key.descending else "ASC"
            parts.append(f"{sql} {direction} NULLS LAST" if key.field.nullable else f"{sql} {direction}")
            params.extend(key_params)
        parts.append(f"r.run_id {'DESC' if self._run_id_descending() else 'ASC'}")
        return Compiled(", ".join(parts), params)

    def _run_id_descending(self) -> bool:
        return self.keys[-1].descending if self.keys else True

    def select_sql(self) -> Compiled:
        """The sort values as extra columns, so the last row of a page yields its token."""
        parts: list[str] = []
        params: list[Any] = []
        for index, key in enumerate(self.keys):
            sql, key_params = key.expression()
            parts.append(f"{sql} AS sort_{index}")
            params.extend(key_params)
        return Compiled(", ".join(parts), params)

    def after_sql(self, values: Sequence[Any], run_id: uuid.UUID) -> Compiled:
        """Rows strictly after (values, run_id) in this ordering (keyset pagination)."""
        last_desc = self._run_id_descending()
        bounds = [_to_param(key.field, value) for key, value in zip(self.keys, values, strict=True)]
        if all(not k.field.nullable and k.descending == last_desc for k in self.keys):
            # One direction, no NULLs: a row comparison the (key..., run_id) index answers directly.
            columns, params, casts = [], [], []
            for key in self.keys:
                sql, key_params = key.expression()
                columns.append(sql)
                params.extend(key_params)
                casts.append(f"%s{_CASTS[key.field.kind]}")
            op = "<" if last_desc else ">"
            return Compiled(
                f"({', '.join([*columns, 'r.run_id'])}) {op} ({', '.join([*casts, '%s::uuid'])})",
                [*params, *bounds, run_id],
            )
        tail = Compiled(f"r.run_id {'<' if last_desc else '>'} %s::uuid", [run_id])
        for key, bound in reversed(list(zip(self.keys, bounds, strict=True))):
            sql, key_params = key.expression()
            if bound is None:
                # In the NULL group (sorted last): only NULL rows can follow, ordered by what comes next.
                tail = Compiled(f"({sql} IS NULL AND {tail.sql})", [*key_params, *tail.params])
                continue
            op = "<" if key.descending else ">"
            cast = _CASTS[key.field.kind]
            after = f"{sql} {op} %s{cast}"
            after_params = [*key_params, bound]
            if key.field.nullable:
                after = f"{after} OR {sql} IS NULL"
                after_params += key_params
            tail = Compiled(
                f"({after} OR ({sql} = %s{cast} AND {tail.sql}))",
                [*after_params, *key_params, bound, *tail.params],
            )
        return tail


_CASTS = {
    "text": "::text",
    "status": "::text",
    "uuid": "::uuid",
    "timestamp": "::timestamptz",
    "number": "::float8",
    "integer": "::int",
    "metric": "::float8",
    "json": "::jsonb",
}


def _to_param(column: Field, value: Any) -> Any:
    """A sort value read back from a token, checked against its field's type (tokens are user input)."""
    kind = column.kind
    if value is None and column.nullable:
        return None
    if kind == "json":
        if not _storable_json(value):
            raise ValueError("sort value JSONB cannot hold")
        return Jsonb(value)
    if kind in ("number", "metric") and isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)  # OverflowError for an integer beyond any double
        if not math.isfinite(number):
            raise ValueError("non-finite sort value")
        return number
    if kind == "integer" and isinstance(value, int) and not isinstance(value, bool):
        if not -(2**31) <= value < 2**31:  # compared as ::int
            raise ValueError("integer sort value out of range")
        return value
    if kind in ("text", "status") and isinstance(value, str) and "\x00" not in value:
        return value
    if kind == "timestamp" and isinstance(value, str):
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            raise ValueError("naive timestamp")
        return moment
    if kind == "uuid" and isinstance(value, str):
        return uuid.UUID(value)
    raise ValueError(f"bad sort value for {column.name}")


def _storable_json(value: Any, depth: int = 0) -> bool:
    """JSON that PostgreSQL's jsonb accepts: finite numbers, no NUL, bounded nesting."""
    if depth > 32:
        return False
    if value is None or isinstance(value, bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return "\x00" not in value
    if isinstance(value, list):
        return all(_storable_json(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all("\x00" not in key and _storable_json(item, depth + 1) for key, item in value.items())
    return False


def token_value(column: Field, value: Any) -> Any:
    """A sort value as JSON for a page token."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def parse_order_by(text: str, default: str = "create_time desc", field_name: str = "order_by") -> Ordering:
    source = text.strip() or default
    keys: list[SortKey] = []
    for item in source.split(","):
        words = item.split()
        if not words or len(words) > 2:
            raise bad_field(field_name, f"expected '<field> [asc|desc]', got {item.strip()[:80]!r}")
        descending = False
        if len(words) == 2:
            if words[1].lower() not in ("asc", "desc"):
                raise bad_field(field_name, f"direction must be asc or desc, got {words[1][:20]!r}")
            descending = words[1].lower() == "desc"
        if words[0] == "tags":
            raise bad_field(field_name, "cannot order by tags")
        keys.append(SortKey(resolve_field(words[0], field_name), descending))
    if len(keys) > 8:
        raise bad_field(field_name, "at most 8 sort fields")
    return Ordering(keys, source)


def encode_page_token(scope: str, filter_text: str, ordering: Ordering, row: dict[str, Any]) -> str:
    """The token after `row` (the last run of a page, with its sort_<i> columns)."""
    values = [token_value(key.field, row[f"sort_{i}"]) for i, key in enumerate(ordering.keys)]
    return page_tokens.encode(page_tokens.binding(scope, filter_text, ordering.text), values, row["run_id"])


def decode_page_token(token: str, scope: str, filter_text: str, ordering: Ordering) -> Compiled | None:
    """The keyset condition a token stands for; INVALID_ARGUMENT `page_token` if it is not ours."""

    def after(values: list[Any], run_id: uuid.UUID) -> Compiled:
        if len(values) != len(ordering.keys):
            raise ValueError("wrong number of sort values")
        return ordering.after_sql(values, run_id)

    return page_tokens.decode(
        token,
        page_tokens.binding(scope, filter_text, ordering.text),
        after,
        stale="was issued for a different filter or order_by",
    )
