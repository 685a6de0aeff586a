"""Dispatch ``python -m bench [NAME [args...]]`` to the benchmark modules of this package.

Discovery is by file, not by a registry, so an engineer adding ``bench/<name>.py`` with a
``main()`` needs to touch nothing else. One benchmark failing does not stop the others when all
run; the exit status says whether any failed.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def discover() -> dict[str, Callable[[], object]]:
    """Benchmark name -> its ``main``, for every public module of this package that has one."""
    found: dict[str, Callable[[], object]] = {}
    for info in sorted(pkgutil.iter_modules([str(PACKAGE_DIR)]), key=lambda m: m.name):
        if info.name.startswith("_") or info.ispkg:
            continue
        module = importlib.import_module(f"bench.{info.name}")
        main = getattr(module, "main", None)
        if callable(main):
            found[info.name] = main
    return found


def run(argv: Sequence[str]) -> int:
    benches = discover()
    if argv and argv[0] in ("-h", "--help", "--list"):
        print("benchmarks:", ", ".join(benches) or "(none)")
        print("usage: python -m bench [NAME [args...]]")
        return 0
    if argv:
        name, rest = argv[0], list(argv[1:])
        if name not in benches:
            print(f"unknown benchmark {name!r}; available: {', '.join(benches)}", file=sys.stderr)
            return 2
        # a benchmark parses its own arguments from sys.argv, as if run as a script
        sys.argv = [f"bench {name}", *rest]
        result = benches[name]()
        return result if isinstance(result, int) else 0
    failed = []
    for name, main in benches.items():
        print(f"=== bench {name} ===", flush=True)
        sys.argv = [f"bench {name}"]
        try:
            result = main()
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        if isinstance(result, int) and result != 0:
            failed.append(name)
    if failed:
        print(f"failed benchmarks: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1:]))
