"""mongoferry: move MongoDB data while applications keep writing."""

__version__ = "0.1.0"
