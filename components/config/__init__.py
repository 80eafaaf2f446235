"""Stack configuration: read once, validated, returned as the frozen settings (components/settings.py)."""

from .reader import ConfigError
from .stack import KNOWN_KEYS, SECRET_KEYS, load_settings, parse_settings

__all__ = ["KNOWN_KEYS", "SECRET_KEYS", "ConfigError", "load_settings", "parse_settings"]
