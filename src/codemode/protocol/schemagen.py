"""Regenerate or check ``schema.json`` from the definitions in :mod:`codemode.protocol.messages`.

Usage, from the repository root::

    .venv/bin/python -m codemode.protocol.schemagen --write   # rewrite schema.json
    .venv/bin/python -m codemode.protocol.schemagen --check   # exit 1 if it is stale
    .venv/bin/python -m codemode.protocol.schemagen           # print the schema
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from codemode.protocol.messages import SCHEMA_PATH, schema_text

__all__ = ["main"]


def main(argv: Sequence[str]) -> int:
    """Run the command; returns the exit status."""
    args = list(argv)
    if args == ["--write"]:
        SCHEMA_PATH.write_text(schema_text(), encoding="utf-8")
        print(f"wrote {SCHEMA_PATH}")
        return 0
    if args == ["--check"]:
        current = SCHEMA_PATH.read_text(encoding="utf-8") if SCHEMA_PATH.exists() else ""
        if current != schema_text():
            print(f"{SCHEMA_PATH} is stale; regenerate it with --write", file=sys.stderr)
            return 1
        print(f"{SCHEMA_PATH} is up to date")
        return 0
    if not args:
        sys.stdout.write(schema_text())
        return 0
    print("usage: python -m codemode.protocol.schemagen [--write | --check]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
