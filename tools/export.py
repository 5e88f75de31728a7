"""Thin wrapper: `python tools/export.py ARGS` = `perception export ARGS`."""

import sys

from perception.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
