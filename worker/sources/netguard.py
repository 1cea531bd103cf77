"""SSRF guard for the worker's HTTP clients (image URLs, webhooks): re-exports ``schemas/netpolicy.py``.

The address rules and the httpcore network backend that enforces them at connect time live in
``schemas/netpolicy.py`` so producers (webhook targets, SNS confirmations) apply exactly the same rules.
"""

from __future__ import annotations

from schemas.netpolicy import AddressPolicy, GuardedBackend, IPAddress, resolve

__all__ = ["AddressPolicy", "GuardedBackend", "IPAddress", "resolve"]
