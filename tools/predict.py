"""Thin wrapper: `python tools/predict.py ARGS` = `perception predict ARGS`."""

import sys

from perception.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
