"""livesnap: self-hosted live-stream snapshots behind an ICE-compatible API."""

__version__ = "0.1.0"
__all__ = ["__version__"]
