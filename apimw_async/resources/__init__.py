"""Resources of :class:`apimw_async.Client`, one module per API area."""

from .auth import AuthResource
from .webhooks import WebhooksResource
from .whatsapp import WhatsAppResource

__all__ = ["AuthResource", "WebhooksResource", "WhatsAppResource"]
