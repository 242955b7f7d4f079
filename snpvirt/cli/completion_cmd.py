"""`snpvirt completion SHELL`: the script that teaches bash, zsh or fish to complete snpvirt's commands."""

from __future__ import annotations

from enum import Enum

import typer

EPILOG = """\b
Examples:
  source <(snpvirt completion bash)        # bash, this shell; put the line in ~/.bashrc to keep it
  source <(snpvirt completion zsh)         # zsh, after compinit; put the line in ~/.zshrc to keep it
  snpvirt completion fish > ~/.config/fish/completions/snpvirt.fish
"""


class Shell(str, Enum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


def completion(shell: Shell = typer.Argument(..., metavar="SHELL", help="bash, zsh or fish.")) -> None:
    """Print the shell completion script for bash, zsh or fish."""
    from typer.completion import get_completion_script

    from snpvirt.cli.app import COMPLETE_VAR, PROG

    typer.echo(get_completion_script(prog_name=PROG, complete_var=COMPLETE_VAR, shell=shell.value))
