"""Thin wrapper: `python tools/features.py ARGS` = `perception features ARGS`."""

import sys

from perception.cli import main

if __name__ == "__main__":
    sys.exit(main(["features", *sys.argv[1:]]))
