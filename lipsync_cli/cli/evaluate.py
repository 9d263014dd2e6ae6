"""CLI commands (evaluate)."""

from lipsync_cli.cli.app import app  # noqa: F401
