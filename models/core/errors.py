"""Error types shared by every stage (stdlib only)."""
from __future__ import annotations


class ConfigError(ValueError):
    """An option, flag or environment variable with a value that cannot work; the message names it."""
