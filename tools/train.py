"""Thin wrapper: `python tools/train.py ARGS` = `perception train ARGS`."""

import sys

from perception.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
