"""The Typer application object; subcommand modules register on it."""

import typer

app = typer.Typer(
    name="lipsync",
    help="Lip-sync dubbing: re-draw a speaker's mouth to match new speech (Wav2Lip family).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Lip-sync dubbing: re-draw a speaker's mouth to match new speech (Wav2Lip family)."""
