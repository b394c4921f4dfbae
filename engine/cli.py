"""The ``reaudio`` command line.

Subcommands that need the training side (torch) import it lazily, so the base
install's commands run without torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

log = logging.getLogger("reaudio")


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _need_training_side() -> None:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise SystemExit(
            "this command needs the training extra: pip install 'reaudio[train]' "
            "(on CPU first: pip install torch==2.13.0)"
        ) from exc


def _cmd_configs(args: argparse.Namespace) -> int:
    _need_training_side()
    from reaudio.training.inspect import describe_configs

    names = args.names or None
    print(describe_configs(names, json_output=args.json))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reaudio", description="Retrieval-augmented text-to-audio: train, export, generate."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("configs", help="list the named model configs with their sizes (needs torch)")
    p.add_argument("names", nargs="*", help="configs to show (default: all)")
    p.add_argument("--json", action="store_true", help="print the full resolved configs as JSON")
    p.set_defaults(func=_cmd_configs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose, args.quiet)
    try:
        return args.func(args)
    except ValueError as exc:
        print(f"reaudio {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
