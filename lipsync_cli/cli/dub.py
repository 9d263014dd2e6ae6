"""CLI commands (dub)."""

from lipsync_cli.cli.app import app  # noqa: F401


@app.command()
def version() -> None:
    """Print the version."""
    from lipsync_cli import __version__

    print(__version__)
