"""Thin wrapper: the GPU half of the benchmark (``perception.benchmark.gpu``); see --help."""

import sys

from perception.benchmark.gpu import main

if __name__ == "__main__":
    sys.exit(main())
