"""Thin wrapper: `python tools/bench.py ARGS` = `perception bench ARGS`."""

import sys

from perception.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
