"""`python -m siglip_export.triton ARTEFACTS REPO [--triton-* flags]`: a Triton model repository
for an export that already exists (`export.py --triton-repo DIR` writes one after exporting)."""

from __future__ import annotations

import sys
from pathlib import Path

from runtime.cli_support import ArgumentParser, run_command

from .flags import add_triton_arguments, triton_options
from .repository import write_triton_repo


def main(argv=None) -> int:
    """`python -m siglip_export.triton ARTEFACTS REPO [--triton-* flags]`: exit 0 written, 2 bad input."""
    parser = ArgumentParser(prog="python -m siglip_export.triton",
                            description="Write a Triton Inference Server model repository from an artefact "
                            "directory written by export.py.")
    parser.add_argument("artefacts", type=Path, help="artefact directory (with manifest.json)")
    parser.add_argument("repo", type=Path, help="model repository to write (replaced whole if written here before)")
    add_triton_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)

    def write():
        for model_dir in write_triton_repo(args.artefacts, args.repo, triton_options(args)):
            print(model_dir)

    return run_command(write, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
