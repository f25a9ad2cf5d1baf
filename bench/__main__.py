"""Run the benchmarks whose module or figure names match the filter (all by default)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    wanted = argv[0] if argv else ""
    here = Path(__file__).parent
    modules = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("b_"))
    ran = 0
    for name in modules:
        module = importlib.import_module(f"bench.{name}")
        figures: tuple[str, ...] = getattr(module, "FIGURES", ())
        if wanted and wanted not in name and wanted not in figures:
            continue
        started = time.monotonic()
        for figure in module.run():
            print(figure.line(), flush=True)
        print(f"# {name} took {time.monotonic() - started:.1f} s", file=sys.stderr)
        ran += 1
    if not ran:
        print(f"no benchmark matches {wanted!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
