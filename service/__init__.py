"""The search API: image + attribute in, nearest catalog items out (`python -m service`).

The server's process settings (OpenMP wait policy, heap tuning) are in `service.runtime`,
applied by `service.app`.
"""

from model.version import __version__

__all__ = ["__version__"]
