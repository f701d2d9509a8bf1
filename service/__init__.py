"""Opt-out and preference service."""

__version__ = "0.1.0"
