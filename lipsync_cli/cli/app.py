"""The Typer application object; subcommand modules register on it."""

import typer

app = typer.Typer(
    name="lipsync",
    help="Lip-sync dubbing: re-draw a speaker's mouth to match new speech (Wav2Lip family).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def console(stderr: bool = False):
    """The rich console every command prints through (messages and progress go to stderr, results to stdout)."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _print_version(value: bool) -> None:
    if value:
        from lipsync_cli import __version__

        print(f"lipsync_cli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Lip-sync dubbing: re-draw a speaker's mouth to match new speech (Wav2Lip family)."""
