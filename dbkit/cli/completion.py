"""dbkit completion bash|zsh|fish: the shell's completion script, from click's own."""

from __future__ import annotations

import click

from dbkit.cli.common import cli

COMPLETE_VAR = "_DBKIT_COMPLETE"  # click's convention for a program named dbkit


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL.

    \b
    bash:  eval "$(dbkit completion bash)"     (in ~/.bashrc)
    zsh:   eval "$(dbkit completion zsh)"      (in ~/.zshrc)
    fish:  dbkit completion fish > ~/.config/fish/completions/dbkit.fish
    """
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None  # click.Choice admits only the shells click knows
    click.echo(cls(cli, {}, "dbkit", COMPLETE_VAR).source())
