"""Thin wrapper: `python tools/eval.py ARGS` = `perception eval ARGS`."""

import sys

from perception.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
