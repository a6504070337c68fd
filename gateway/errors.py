"""Errors shared by the gateway's modules."""

from __future__ import annotations


class ConfigError(ValueError):
    """The configuration cannot be used; the message starts with the offending key."""
