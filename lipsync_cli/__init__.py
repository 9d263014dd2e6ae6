"""lipsync_cli: lip-sync dubbing with Wav2Lip-family generators."""

__version__ = "0.1.0"
