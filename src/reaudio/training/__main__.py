"""``python -m reaudio.training MODEL …`` — the same as ``reaudio train MODEL …``; what torchrun launches."""

import sys

from reaudio.engine.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["train", *sys.argv[1:]]))
