"""Every environment variable the code reads, declared once, and read with clear errors.

A `Setting` names one variable: its kind, default, unit, bounds, what it means and which
processes read it. Settings several processes share are declared in `taxidriver/settings.py`,
a service's own in `<service>/settings.py`; declaring a name twice fails at import.
A frozen settings dataclass binds its fields with `env_field(SETTING)` and derives from
`EnvSettings`: `from_env()` reads every bound field, and construction checks each value
against its declaration, so a test's hand-built settings obey the same bounds.

`docs/configuration.md` is generated from the declarations (`make docs`), and
tests/test_configuration.py fails when it is stale or when code reads a variable that
is not declared.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# The key of a settings dataclass field's metadata that holds its Setting.
_SETTING = "setting"

# Every declared setting by name, filled as modules declaring them are imported.
_DECLARED: dict[str, Setting[Any]] = {}


class StartupError(RuntimeError):
    """The process cannot start (a bad setting, a port in use, ...); the message says why in one line."""


class SettingsError(StartupError):
    """A setting is missing or malformed; the service refuses to start."""


@dataclass(frozen=True)
class Kind(Generic[T]):
    """How a variable's text becomes a value; `name` is how the docs and errors call it."""

    name: str
    parse: Callable[[str], T]


def _integer(raw: str) -> int:
    return int(raw.strip())


def _number(raw: str) -> float:
    value = float(raw.strip())
    if not math.isfinite(value):
        raise ValueError(raw)
    return value


def _boolean(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(raw)


def _addresses(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


TEXT: Kind[str] = Kind("text", str)
INTEGER: Kind[int] = Kind("integer", _integer)
NUMBER: Kind[float] = Kind("number", _number)
BOOLEAN: Kind[bool] = Kind("true or false", _boolean)
ADDRESSES: Kind[tuple[str, ...]] = Kind("comma-separated addresses", _addresses)
LEVEL: Kind[str] = Kind("log level", lambda raw: raw.strip().upper())


@dataclass(frozen=True, kw_only=True, eq=False)
class Setting(Generic[T]):
    """One environment variable. An unset or empty variable takes the default."""

    name: str
    kind: Kind[T]
    description: str
    # Which processes read it ("gateway", "trainer", "make run", "CLI", ...).
    read_by: tuple[str, ...]
    default: T | None = None
    # A default computed per process (a CPU count, a random secret); `shown_default` says which.
    default_factory: Callable[[], T] | None = None
    shown_default: str = ""
    unit: str = ""
    minimum: float | None = None
    # The minimum itself is refused (a strictly positive interval, say).
    exclusive_minimum: bool = False
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    # An empty value (or empty list) is refused: set it, or do not set it.
    required: bool = False
    # Never shown in the docs' default column or in errors.
    secret: bool = False

    def __post_init__(self) -> None:
        known = _DECLARED.get(self.name)
        if known is not None and (known.description, known.read_by) != (self.description, self.read_by):
            raise RuntimeError(f"environment variable {self.name} is declared twice")
        _DECLARED[self.name] = self

    def default_value(self) -> T:
        if self.default_factory is not None:
            return self.default_factory()
        return self.default  # type: ignore[return-value]

    def read(self) -> T:
        """The variable's value, or the default when it is unset or empty; SettingsError if malformed."""
        raw = os.environ.get(self.name, "")
        if raw == "":
            value = self.default_value()
        else:
            try:
                value = self.kind.parse(raw)
            except ValueError:
                shown = "" if self.secret else f", got {raw!r}"
                raise SettingsError(f"{self.name} must be {self._kind_phrase()}{shown}") from None
        self.check(value)
        return value

    def check(self, value: T) -> None:
        """Refuses a value outside the declared bounds, naming the variable."""
        problem = self._problem(value)
        if problem:
            shown = "" if self.secret else f", got {value!r}"
            raise SettingsError(f"{self.name} {problem}{shown}")

    def _problem(self, value: Any) -> str:
        unit = f" ({self.unit})" if self.unit else ""
        if self.required and value in ("", ()):
            return f"is required: {self.description.split('. ')[0].rstrip('.')}"
        if isinstance(value, tuple) and not value:
            return "must list at least one address"
        if self.choices and str(value).upper() not in self.choices:
            return f"must be one of {', '.join(self.choices)}"
        if isinstance(value, int | float) and not isinstance(value, bool):
            if self.minimum is not None and (value <= self.minimum if self.exclusive_minimum else value < self.minimum):
                return f"must be {'>' if self.exclusive_minimum else '>='} {_number_text(self.minimum)}{unit}"
            if self.maximum is not None and value > self.maximum:
                return f"must be <= {_number_text(self.maximum)}{unit}"
        return ""

    def _kind_phrase(self) -> str:
        unit = f" of {self.unit}" if self.unit else ""
        if self.kind is INTEGER:
            return f"an integer{unit}"
        if self.kind is NUMBER:
            return f"a number{unit}"
        return self.kind.name


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def text(name: str, default: str, description: str, read_by: tuple[str, ...], **options: Any) -> Setting[str]:
    return Setting(name=name, kind=TEXT, default=default, description=description, read_by=read_by, **options)


def integer(name: str, default: int, description: str, read_by: tuple[str, ...], **options: Any) -> Setting[int]:
    return Setting(name=name, kind=INTEGER, default=default, description=description, read_by=read_by, **options)


def seconds(
    name: str, default: float, description: str, read_by: tuple[str, ...], *, zero: bool = False
) -> Setting[float]:
    """A duration: every one is in seconds, and positive (or zero, where that means "at once")."""
    return Setting(
        name=name,
        kind=NUMBER,
        default=default,
        unit="seconds",
        minimum=0,
        exclusive_minimum=not zero,
        description=description,
        read_by=read_by,
    )


def port(name: str, default: int, description: str, read_by: tuple[str, ...], *, minimum: int = 0) -> Setting[int]:
    return integer(name, default, description, read_by, minimum=minimum, maximum=65535)


def env_field(setting: Setting[T], *, repr: bool = True) -> Any:
    """A settings dataclass field read from `setting` by `from_env`, with the same default."""
    metadata = {_SETTING: setting}
    if setting.default_factory is not None:
        return dataclasses.field(default_factory=setting.default_factory, metadata=metadata, repr=repr)
    return dataclasses.field(default=setting.default, metadata=metadata, repr=repr)


_S = TypeVar("_S", bound="EnvSettings")


class EnvSettings:
    """Base of the frozen settings dataclasses: each field bound with `env_field` is read by
    `from_env` and checked against its declaration whenever the settings are built."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            setting = field.metadata.get(_SETTING)
            if setting is not None:
                setting.check(getattr(self, field.name))

    @classmethod
    def env_values(cls) -> dict[str, Any]:
        """The bound fields' values from the environment, by field name."""
        return {
            field.name: field.metadata[_SETTING].read()
            for field in dataclasses.fields(cls)  # type: ignore[arg-type]
            if _SETTING in field.metadata
        }

    @classmethod
    def from_env(cls: type[_S]) -> _S:
        return cls(**cls.env_values())
