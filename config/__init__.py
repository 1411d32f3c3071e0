"""Settings and data files (unit catalogue, queues) for tinbao."""

from config.settings import ConfigError, Settings, load_settings, resolve_secret_key

__all__ = ["ConfigError", "Settings", "load_settings", "resolve_secret_key"]
