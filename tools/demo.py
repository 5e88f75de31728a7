"""Thin wrapper: `python tools/demo.py ARGS` = `perception demo ARGS`."""

import sys

from perception.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
