"""`gpucap completion bash|zsh`: a shell completion script generated from the argparse tree.

shtab writes the script from the same parser `gpucap` runs, so every command, flag and choice
completes as it is today, and a path argument completes file names. Install it once:

    gpucap completion bash > /etc/bash_completion.d/gpucap
    gpucap completion zsh > "${fpath[1]}/_gpucap"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

SHELLS = ("bash", "zsh")


def register(subparsers: Any) -> None:
    comp = subparsers.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="Print the completion script for SHELL on stdout, e.g. "
        "`gpucap completion bash > /etc/bash_completion.d/gpucap`.",
    )
    comp.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    comp.set_defaults(func=run_completion)


def script(shell: str) -> str:
    """The completion script for `shell`, from the parser `gpucap` builds."""
    import shtab

    from gpucap.cli import build_parser

    parser = build_parser()
    _complete_paths(parser, shtab.FILE)
    text: str = shtab.complete(parser, shell=shell)
    return text if text.endswith("\n") else text + "\n"


def _complete_paths(parser: argparse.ArgumentParser, files: Any) -> None:
    """Mark every argument that takes a path (`type=Path`) to complete file names."""
    for action in parser._actions:  # argparse keeps no public list of a parser's actions
        if action.type is Path:
            action.complete = files  # type: ignore[attr-defined]  # shtab reads this attribute
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _complete_paths(sub, files)


def run_completion(args: argparse.Namespace) -> int:
    sys.stdout.write(script(args.shell))
    return 0
