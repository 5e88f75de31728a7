"""Thin wrapper: `python tools/convert.py ARGS` = `perception convert ARGS`."""

import sys

from perception.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
