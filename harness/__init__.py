"""Test tooling for guest kernels: scripted sessions, golden traces, the pytest plugin.

The library (sessions, goldens, strategies) never imports pytest; harness.pytest_plugin does.
"""

from .session import GuestSession

__all__ = ["GuestSession"]
