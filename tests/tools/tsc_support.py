"""The real TypeScript compiler for the tests of the rendered declarations.

:func:`typescript_compiler` installs the npm ``typescript`` package (a pinned version) once into
a cache directory (``$CODEMODE_TEST_CACHE``, else ``~/.cache/codemode-tests``) and yields the path
of its ``tsc``. Without npm the tests that need it are skipped with a loud message; any other
failure to install fails them.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

TYPESCRIPT_VERSION = "5.9.3"


def _cache_root() -> Path:
    configured = os.environ.get("CODEMODE_TEST_CACHE")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "codemode-tests"


@functools.cache
def _installed_tsc() -> Path:
    """The ``tsc`` of npm ``typescript@{TYPESCRIPT_VERSION}``, installed on first use."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        message = (
            "!!! npm/node not found: the TypeScript compiler checks of the rendered declarations "
            "are SKIPPED. Install Node.js and npm to run them. !!!"
        )
        print(f"\n{message}", file=sys.stderr)
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    prefix = _cache_root() / f"typescript-{TYPESCRIPT_VERSION}"
    tsc = prefix / "node_modules" / "typescript" / "bin" / "tsc"
    if not tsc.exists():
        prefix.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(prefix),
                "--no-audit",
                "--no-fund",
                "--no-save",
                f"typescript@{TYPESCRIPT_VERSION}",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0 or not tsc.exists():
            pytest.fail(f"npm install typescript@{TYPESCRIPT_VERSION} failed:\n{result.stderr}")
    return tsc


def typescript_compiler() -> Path:
    """The path of ``tsc``, installed once per test session (skips loudly without npm)."""
    return _installed_tsc()
