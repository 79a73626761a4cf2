"""Dispatch `python -m edgesplit.bench NAME [args]` to edgesplit.bench.NAME.main(args)."""
import importlib
import pkgutil
import sys
from typing import List, Optional

import edgesplit.bench


def available() -> List[str]:
    """The benchmark names: the public modules of edgesplit.bench."""
    return sorted(m.name for m in pkgutil.iter_modules(edgesplit.bench.__path__)
                  if not m.name.startswith("_"))


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = available()
    if not argv or argv[0] not in names:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"unknown benchmark {argv[0]!r}", file=sys.stderr)
        print("usage: python -m edgesplit.bench NAME [args]  (NAME --help for its options)\n"
              f"available: {', '.join(names)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"edgesplit.bench.{argv[0]}")
    return int(module.main(argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
