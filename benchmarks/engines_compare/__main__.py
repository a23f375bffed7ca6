"""``python benchmarks/engines_compare [ARGS]`` (or ``python -m engines_compare`` from
``benchmarks/``): the engines comparison, same flags and output as ever."""

import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engines_compare.cli import main

if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()
