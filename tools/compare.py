"""Thin wrapper: `python tools/compare.py ARGS` = `perception compare ARGS`."""

import sys

from perception.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
