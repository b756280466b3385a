"""Every environment variable is declared once (taxidriver/config.py), read through its
declaration, checked against it, and listed in the generated docs/configuration.md."""

from __future__ import annotations

import ast
import dataclasses
import importlib
from pathlib import Path

import pytest

from taxidriver import config_doc
from taxidriver.config import INTEGER, NUMBER, EnvSettings, Setting, SettingsError, env_field
from tests.support import ROOT

# The packages whose code runs as our processes (bench/ and tests/ are tools, not services;
# deploy/scripts/ are standalone probes for the images).
PACKAGES = ("taxidriver", "trainer_service", "registry_service", "gateway", "tuner_service", "web")
MECHANISM = ROOT / "taxidriver" / "config.py"


def _sources() -> list[Path]:
    return [
        path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if not path.name.endswith(("_pb2.py", "_pb2_grpc.py", "_pb2.pyi"))
    ]


def _is_environ(node: ast.expr) -> bool:
    """`os.environ` or a bare `environ`."""
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ"
    )


def environment_reads(source: str) -> list[int]:
    """Lines that read a variable from the environment: os.environ.get / [..] / `in`, os.getenv."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in {"get", "pop", "setdefault"} and _is_environ(node.func.value):
                lines.append(node.lineno)
            if node.func.attr in {"getenv", "getenvb"}:
                lines.append(node.lineno)
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_environ(node.value):
            lines.append(node.lineno)
        if isinstance(node, ast.Compare) and any(_is_environ(c) for c in node.comparators):
            lines.append(node.lineno)
    return lines


def test_the_scanner_finds_every_way_of_reading_a_variable() -> None:
    source = "\n".join(
        [
            "import os",
            "a = os.environ.get('A')",
            "b = os.getenv('B')",
            "c = os.environ['C']",
            "d = 'D' in os.environ",
            "env = {**os.environ, 'X': '1'}",  # handing the environment to a child reads nothing
            "os.environ['E'] = '1'",
        ]
    )
    assert environment_reads(source) == [2, 3, 4, 5]


def test_code_reads_the_environment_only_through_declared_settings() -> None:
    reads = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in _sources()
        if path != MECHANISM
        for line in environment_reads(path.read_text())
    ]
    assert reads == [], "read these through a Setting declared in a settings.py (taxidriver/config.py)"


def test_settings_are_declared_only_in_settings_modules() -> None:
    constructors = {"Setting", "text", "integer", "seconds", "port"}

    def declares(path: Path) -> bool:
        tree = ast.parse(path.read_text())
        imported = {
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "taxidriver.config"
            for alias in node.names
            if alias.name in constructors
        }
        return any(
            isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in imported
            for node in ast.walk(tree)
        )

    declaring = sorted(str(path.relative_to(ROOT)) for path in _sources() if path != MECHANISM and declares(path))
    assert declaring == sorted(f"{module.replace('.', '/')}.py" for module in config_doc.settings_modules())


def test_every_settings_field_is_bound_to_a_declaration() -> None:
    unbound = []
    for module_name in config_doc.settings_modules():
        module = importlib.import_module(module_name)
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, EnvSettings) and dataclasses.is_dataclass(value):
                unbound += [
                    f"{value.__name__}.{f.name}" for f in dataclasses.fields(value) if "setting" not in f.metadata
                ]
    assert unbound == []


def test_a_variable_declared_twice_is_refused() -> None:
    with pytest.raises(RuntimeError, match="LOG_LEVEL is declared twice"):
        Setting(name="LOG_LEVEL", kind=INTEGER, default=0, description="another meaning", read_by=("web",))


def test_the_committed_configuration_doc_is_current() -> None:
    expected = config_doc.render(config_doc.all_settings())
    assert config_doc.DOC.read_text() == expected, "docs/configuration.md is stale: run `make docs`"


def test_every_declared_variable_is_in_the_doc() -> None:
    text = config_doc.DOC.read_text()
    names = [setting.name for setting in config_doc.all_settings()]
    assert len(names) >= 40
    assert [name for name in names if f"| `{name}` |" not in text] == []


GRACE = Setting(
    name="TEST_CONFIGURATION_GRACE_S",
    kind=NUMBER,
    default=1.5,
    unit="seconds",
    minimum=0,
    description="A test's grace.",
    read_by=("tests",),
)
WORKERS = Setting(
    name="TEST_CONFIGURATION_WORKERS",
    kind=INTEGER,
    default=2,
    minimum=1,
    maximum=64,
    description="A test's workers.",
    read_by=("tests",),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Example(EnvSettings):
    grace: float = env_field(GRACE)
    workers: int = env_field(WORKERS)


def test_unset_and_empty_variables_take_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(GRACE.name, raising=False)
    monkeypatch.setenv(WORKERS.name, "")
    assert _Example.from_env() == _Example(grace=1.5, workers=2)


def test_a_set_variable_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(GRACE.name, " 0.25 ")
    monkeypatch.setenv(WORKERS.name, "7")
    assert _Example.from_env() == _Example(grace=0.25, workers=7)


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        (GRACE.name, "soon", "TEST_CONFIGURATION_GRACE_S must be a number of seconds, got 'soon'"),
        (GRACE.name, "nan", "TEST_CONFIGURATION_GRACE_S must be a number of seconds, got 'nan'"),
        (GRACE.name, "-1", "TEST_CONFIGURATION_GRACE_S must be >= 0 (seconds), got -1.0"),
        (WORKERS.name, "2.5", "TEST_CONFIGURATION_WORKERS must be an integer, got '2.5'"),
        (WORKERS.name, "0", "TEST_CONFIGURATION_WORKERS must be >= 1, got 0"),
        (WORKERS.name, "65", "TEST_CONFIGURATION_WORKERS must be <= 64, got 65"),
    ],
)
def test_a_bad_value_is_refused_in_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, raw: str, message: str
) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(SettingsError) as refused:
        _Example.from_env()
    assert str(refused.value) == message


def test_hand_built_settings_obey_the_declared_bounds() -> None:
    with pytest.raises(SettingsError, match="TEST_CONFIGURATION_WORKERS must be >= 1, got 0"):
        _Example(workers=0)


def test_a_log_level_outside_the_choices_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from taxidriver.settings import LOG_LEVEL

    monkeypatch.setenv("LOG_LEVEL", "debug")
    assert LOG_LEVEL.read() == "DEBUG"
    monkeypatch.setenv("LOG_LEVEL", "loud")
    with pytest.raises(SettingsError, match="LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"):
        LOG_LEVEL.read()


def test_a_secret_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    from web.settings import WebSettings

    monkeypatch.setenv("WEB_SESSION_SECRET", "short-secret")
    with pytest.raises(SettingsError) as refused:
        WebSettings.from_env()
    assert "short-secret" not in str(refused.value)
    assert "WEB_SESSION_SECRET" in str(refused.value)
