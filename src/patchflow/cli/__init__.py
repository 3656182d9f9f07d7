"""The `patchflow` command line: one subcommand per job.

    patchflow info                                   versions, device, where weights live
    patchflow shapes "a red circle moving right on a black background" -o clip.mp4
    patchflow shapes --preview -o grid.gif           random captioned Shapes World clips
    patchflow eval shapes clip.mp4 --prompt "..."    does a video follow its prompt?
    patchflow eval model --count 100 --json          judge a model, one row per capability
    patchflow data fetch                             real clips and photos for the general VAE

Imports of heavy modules happen inside each command so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

EPILOG = "Run `patchflow COMMAND --help` for a command's options and examples."


# One module per subcommand, each with `add_parser(sub, argv)` (its arguments, examples and run function).
COMMANDS = ("info", "shapes", "train", "data", "cache", "plot", "generate", "serve", "bench", "eval")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="patchflow", description=__doc__.split("\n\n")[0], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"patchflow.cli.{name}").add_parser(sub, argv)
    return parser


def _version() -> str:
    from patchflow import __version__

    return f"patchflow {__version__}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError) as e:  # user errors: one line, no traceback
        print(f"patchflow {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
