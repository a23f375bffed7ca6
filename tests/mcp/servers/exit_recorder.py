"""Runs a command (its stdin, stdout and stderr inherited) and, when it exits, writes
``{"returncode": ..., "exited": time.monotonic()}`` to the file named by the first argument.
Lets a test driving ``codemode mcp`` through the official stdio client see how and when it ended.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

if __name__ == "__main__":
    child = subprocess.Popen(sys.argv[2:])
    with open(sys.argv[1] + ".pid", "w", encoding="utf-8") as pid_file:
        pid_file.write(str(child.pid))
    returncode = child.wait()
    exited = time.monotonic()
    with open(sys.argv[1], "w", encoding="utf-8") as out:
        json.dump({"returncode": returncode, "exited": exited}, out)
    sys.exit(returncode & 0xFF)
