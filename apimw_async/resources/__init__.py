"""Resources of :class:`apimw_async.Client`, one module per API area."""

from .auth import AuthResource

__all__ = ["AuthResource"]
