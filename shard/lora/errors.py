"""AdapterError: the one error type for missing, corrupt or mismatched adapters."""

from __future__ import annotations


class AdapterError(ValueError):
    """An adapter cannot be used; the message says why and what to do. Affects that request alone."""
