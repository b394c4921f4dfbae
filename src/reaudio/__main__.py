"""``python -m reaudio …``: the same command line as the ``reaudio`` console script."""

from reaudio.engine.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
