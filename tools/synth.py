"""Thin wrapper: `python tools/synth.py ARGS` = `perception synth ARGS`."""

import sys

from perception.cli import main

if __name__ == "__main__":
    sys.exit(main(["synth", *sys.argv[1:]]))
