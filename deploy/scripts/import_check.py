"""Build-stage guard: import every module of the given packages inside the image's venv.

The images carry per-service dependency subsets; an import that a subset lacks must fail
`docker build`, not a pod at 3 a.m. Modules that only run on a developer's machine are skipped.

    python import_check.py gateway taxidriver
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

# Developer-machine helpers of the shared package (embedded PostgreSQL, the dev stack, the CLI).
SKIP = {"taxidriver.embedded_pg", "taxidriver.devstack", "taxidriver.cli"}


def main(packages: list[str]) -> int:
    failures: list[str] = []
    count = 0
    for name in packages:
        package = importlib.import_module(name)
        for module in pkgutil.walk_packages(package.__path__, f"{name}."):
            if module.name in SKIP or module.name.split(".")[1:2] in (["registry"], ["trainer"], ["ingest"], ["tuner"]):
                continue  # generated code is imported by the modules that use it
            if module.name.endswith(".__main__"):
                continue  # importing it would start the server
            try:
                importlib.import_module(module.name)
                count += 1
            except Exception as exc:  # noqa: BLE001 - report every failure, not only the first
                failures.append(f"{module.name}: {type(exc).__name__}: {exc}")
    for failure in failures:
        print(f"import-check: {failure}", file=sys.stderr)
    print(f"import-check: {count} modules of {', '.join(packages)} import; {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
