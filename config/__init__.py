"""Settings of rcbatch: read once at the edge (CLI, worker start-up) and passed down."""

from rcbatch.config.settings import Settings, load_settings

__all__ = ["Settings", "load_settings"]
