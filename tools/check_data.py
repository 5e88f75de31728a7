"""Thin wrapper: `python tools/check_data.py ARGS` = `perception check-data ARGS`."""

import sys

from perception.cli import main

if __name__ == "__main__":
    sys.exit(main(["check-data", *sys.argv[1:]]))
