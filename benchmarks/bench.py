"""Throughput benchmark of the phasespace engine (see phasespace/bench/bench.py for what it measures).

Usage: ``python benchmarks/bench.py`` (about 5 minutes on a quiet 2-core CPU; ``--quick`` for a
smoke run, ``--help`` for options). Results are appended to benchmarks/RESULTS.md.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from phasespace.bench.bench import main

if __name__ == "__main__":
    sys.exit(main())
