"""CLI commands (models)."""

from lipsync_cli.cli.app import app  # noqa: F401
