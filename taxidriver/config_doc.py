"""`python -m taxidriver.config_doc`: writes docs/configuration.md from the declared settings.

The declarations live in `taxidriver/settings.py` and each service's `settings.py`; this
finds them by looking for a `settings.py` in every top-level package of the repository
(so the plumbing names no service). `--check` exits 1 when the committed file differs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

from taxidriver.config import Setting

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "configuration.md"
# Sections in this order; a setting read by several processes is under "Shared".
SECTIONS = ("Shared", "gateway", "trainer", "registry", "tuner", "web", "make run", "CLI")

INTRO = """\
# Configuration

Every environment variable the services, `make run` and the CLI read, generated from their
declarations (`taxidriver/settings.py` for the shared ones, each service's `settings.py` for
its own) by `make docs`; tests/test_configuration.py fails when this file is stale, or when
code reads a variable that is not declared. Do not edit it by hand.

An unset or empty variable takes its default. A malformed value (not a number, below its
minimum, not one of the choices) stops the process at start-up with one line naming the
variable, and exit status 2.

Units: names ending `_S` or `_SECONDS` are seconds, and so are the older names without a
suffix whose unit column says so (`GATEWAY_SHUTDOWN_GRACE`, `REGISTRY_CONNECT_TIMEOUT`, ...):
the names are kept as deployments set them, and the unit is given here.
"""


def settings_modules(root: Path = ROOT) -> list[str]:
    """`<package>.settings` for every top-level package of the repository that has one."""
    return sorted(
        f"{path.parent.name}.settings" for path in root.glob("*/settings.py") if (path.parent / "__init__.py").exists()
    )


def all_settings() -> list[Setting[Any]]:
    """The settings the settings modules declare (or import: the shared ones), by name."""
    found: dict[str, Setting[Any]] = {}
    for name in settings_modules():
        module = importlib.import_module(name)
        found.update((value.name, value) for value in vars(module).values() if isinstance(value, Setting))
    return [found[name] for name in sorted(found)]


def _section(setting: Setting[Any]) -> str:
    return "Shared" if len(setting.read_by) > 1 else setting.read_by[0]


def _default(setting: Setting[Any]) -> str:
    if setting.shown_default:
        return setting.shown_default
    if setting.secret or setting.default in ("", None):
        return "(empty)"
    value = setting.default
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def _bounds(setting: Setting[Any]) -> str:
    parts = []
    if setting.minimum is not None:
        parts.append(f"{'>' if setting.exclusive_minimum else '>='} {setting.minimum:g}")
    if setting.maximum is not None:
        parts.append(f"<= {setting.maximum:g}")
    if setting.choices:
        parts.append(" / ".join(setting.choices))
    return ", ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;")


def render(settings: list[Setting[Any]]) -> str:
    lines = [INTRO.rstrip("\n")]
    for section in SECTIONS:
        chosen = [s for s in settings if _section(s) == section]
        if not chosen:
            continue
        lines.append(f"\n## {section}\n")
        lines.append("| Variable | Kind | Default | Unit | Allowed | Read by | Meaning |")
        lines.append("|---|---|---|---|---|---|---|")
        for s in chosen:
            cells = [
                f"`{s.name}`",
                s.kind.name,
                f"`{_default(s)}`" if _default(s) != "(empty)" else "(empty)",
                s.unit,
                _bounds(s),
                ", ".join(s.read_by),
                s.description,
            ]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    unplaced = [s.name for s in settings if _section(s) not in SECTIONS]
    if unplaced:
        raise SystemExit(f"settings read by no known process: {', '.join(unplaced)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/configuration.md is not current")
    args = parser.parse_args(argv)
    text = render(all_settings())
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC.relative_to(ROOT)} is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
