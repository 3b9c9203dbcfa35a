"""The fake server's built-in WhatsApp template catalogue (45 templates).

Shaped as ``GET /v1/whatsapp/templates`` lists them: ``name``, ``language``, ``status``
(``APPROVED``/``PENDING``/``REJECTED``), ``category`` (``TRANSACTIONAL``/``MARKETING``/``OTP``/
``UTILITY``) and ``components`` with **upper-case** ``type`` values (``HEADER`` with ``format``
``TEXT``, ``BODY`` with ``{{1}}``-style placeholders, ``FOOTER``, and on a few ``BUTTONS``).
Some names exist in several languages, as on WhatsApp, where a template is one name with a
translation per language.
"""

from __future__ import annotations

from typing import Any, Final

# name, language, category, status, header, body, footer
_ROWS: Final[tuple[tuple[str, str, str, str, str | None, str, str | None], ...]] = (
    # TRANSACTIONAL
    ("order_confirmation", "en", "TRANSACTIONAL", "APPROVED", "Order Confirmed",
     "Hi {{1}}, your order {{2}} has been confirmed. Total: {{3}}.",
     "Thank you for shopping with us"),
    ("order_confirmation", "es", "TRANSACTIONAL", "APPROVED", "Pedido confirmado",
     "Hola {{1}}, tu pedido {{2}} ha sido confirmado. Total: {{3}}.",
     "Gracias por tu compra"),
    ("order_confirmation", "pt_BR", "TRANSACTIONAL", "APPROVED", "Pedido confirmado",
     "Olá {{1}}, seu pedido {{2}} foi confirmado. Total: {{3}}.", None),
    ("shipping_update", "en", "TRANSACTIONAL", "APPROVED", "Your order has shipped",
     "Hi {{1}}, your package is on its way! Tracking number: {{2}}.",
     "Reply STOP to opt out"),
    ("shipping_update", "es", "TRANSACTIONAL", "APPROVED", "Tu pedido ha sido enviado",
     "Hola {{1}}, ¡tu paquete está en camino! Número de seguimiento: {{2}}.", None),
    ("delivery_confirmation", "en", "TRANSACTIONAL", "APPROVED", None,
     "Hi {{1}}, your order {{2}} was delivered on {{3}}. Enjoy!", None),
    ("payment_receipt", "en", "TRANSACTIONAL", "APPROVED", "Payment received",
     "Hi {{1}}, we received your payment of {{2}} for invoice {{3}}.",
     "Keep this message for your records"),
    ("refund_processed", "en", "TRANSACTIONAL", "APPROVED", None,
     "Hi {{1}}, your refund of {{2}} for order {{3}} has been processed.", None),
    ("order_cancelled", "en", "TRANSACTIONAL", "APPROVED", "Order cancelled",
     "Hi {{1}}, your order {{2}} has been cancelled as requested.", None),
    ("invoice_available", "en", "TRANSACTIONAL", "PENDING", "New invoice",
     "Hi {{1}}, invoice {{2}} for {{3}} is now available.", None),
    ("return_label", "en", "TRANSACTIONAL", "REJECTED", None,
     "Hi {{1}}, here is your return label for order {{2}}: {{3}}", None),
    ("subscription_renewed", "en", "TRANSACTIONAL", "APPROVED", None,
     "Hi {{1}}, your {{2}} subscription has been renewed until {{3}}.", None),
    # UTILITY
    ("appointment_reminder", "en", "UTILITY", "APPROVED", "Appointment reminder",
     "Hi {{1}}, this is a reminder of your appointment on {{2}} at {{3}}.",
     "Reply 1 to confirm or 2 to reschedule"),
    ("appointment_reminder", "fr", "UTILITY", "APPROVED", "Rappel de rendez-vous",
     "Bonjour {{1}}, nous vous rappelons votre rendez-vous le {{2}} à {{3}}.", None),
    ("appointment_rescheduled", "en", "UTILITY", "APPROVED", None,
     "Hi {{1}}, your appointment has been moved to {{2}} at {{3}}.", None),
    ("account_update", "en", "UTILITY", "APPROVED", None,
     "Hi {{1}}, your account details were updated on {{2}}.",
     "If this wasn't you, contact support"),
    ("password_changed", "en", "UTILITY", "APPROVED", "Security alert",
     "Hi {{1}}, the password of your account was changed on {{2}}.", None),
    ("address_change_confirmation", "en", "UTILITY", "PENDING", None,
     "Hi {{1}}, your delivery address was changed to {{2}}.", None),
    ("service_outage_notice", "en", "UTILITY", "APPROVED", "Service notice",
     "We are experiencing an outage affecting {{1}}. Expected resolution: {{2}}.", None),
    ("document_ready", "en", "UTILITY", "APPROVED", None,
     "Hi {{1}}, your document {{2}} is ready to download.", None),
    ("ticket_update", "en", "UTILITY", "APPROVED", "Support ticket {{1}}",
     "Hi {{2}}, your support ticket has a new reply: {{3}}", None),
    ("booking_confirmation", "en", "UTILITY", "APPROVED", "Booking confirmed",
     "Hi {{1}}, your booking {{2}} on {{3}} is confirmed.", None),
    ("booking_confirmation", "de", "UTILITY", "APPROVED", "Buchung bestätigt",
     "Hallo {{1}}, Ihre Buchung {{2}} am {{3}} ist bestätigt.", None),
    ("payment_due_reminder", "en", "UTILITY", "APPROVED", None,
     "Hi {{1}}, a payment of {{2}} is due on {{3}}.", None),
    ("feedback_request", "en", "UTILITY", "REJECTED", None,
     "Hi {{1}}, how was your experience with {{2}}? Reply with a score from 1 to 5.", None),
    # OTP
    ("verification_code", "en", "OTP", "APPROVED", None,
     "{{1}} is your verification code. For your security, do not share this code.",
     "This code expires in 10 minutes."),
    ("verification_code", "es", "OTP", "APPROVED", None,
     "{{1}} es tu código de verificación. Por tu seguridad, no lo compartas.",
     "Este código caduca en 10 minutos."),
    ("login_code", "en", "OTP", "APPROVED", None,
     "Your login code is {{1}}.", "This code expires in 5 minutes."),
    ("two_factor_code", "en", "OTP", "PENDING", None,
     "Use {{1}} as your two-factor authentication code.", None),
    ("password_reset_code", "en", "OTP", "APPROVED", None,
     "{{1}} is your password reset code.", "Didn't request this? Ignore this message."),
    ("transaction_otp", "en", "OTP", "REJECTED", None,
     "Use {{1}} to approve the payment of {{2}} to {{3}}.", None),
    # MARKETING
    ("welcome_offer", "en", "MARKETING", "APPROVED", "Welcome!",
     "Hi {{1}}, welcome aboard! Enjoy {{2}} off your first order with code {{3}}.",
     "Reply STOP to unsubscribe"),
    ("seasonal_sale", "en", "MARKETING", "APPROVED", "Summer sale",
     "Hi {{1}}, our summer sale is on: up to {{2}} off until {{3}}.",
     "Reply STOP to unsubscribe"),
    ("abandoned_cart", "en", "MARKETING", "APPROVED", None,
     "Hi {{1}}, you left {{2}} in your cart. Complete your order today!", None),
    ("new_arrivals", "en", "MARKETING", "PENDING", "New arrivals",
     "Hi {{1}}, check out this week's new arrivals in {{2}}.", None),
    ("loyalty_points", "en", "MARKETING", "APPROVED", None,
     "Hi {{1}}, you have {{2}} loyalty points. Redeem them before {{3}}.", None),
    ("referral_invite", "en", "MARKETING", "APPROVED", None,
     "Hi {{1}}, invite a friend and you both get {{2}}. Your code: {{3}}.", None),
    ("flash_sale", "en", "MARKETING", "REJECTED", "FLASH SALE",
     "{{1}}: everything must go! {{2}} off for the next 2 hours only.", None),
    ("event_invitation", "en", "MARKETING", "APPROVED", "You're invited",
     "Hi {{1}}, join us for {{2}} on {{3}}.", None),
    ("product_back_in_stock", "en", "MARKETING", "APPROVED", None,
     "Good news {{1}}: {{2}} is back in stock.", None),
    ("birthday_discount", "en", "MARKETING", "APPROVED", "Happy birthday!",
     "Happy birthday {{1}}! Here is {{2}} off, valid until {{3}}.", None),
    ("newsletter_weekly", "en", "MARKETING", "PENDING", None,
     "Hi {{1}}, here is your weekly digest: {{2}}", "Reply STOP to unsubscribe"),
    ("win_back_offer", "en", "MARKETING", "REJECTED", None,
     "We miss you, {{1}}! Come back and get {{2}} off.", None),
    ("survey_invitation", "en", "MARKETING", "APPROVED", None,
     "Hi {{1}}, tell us what you think about {{2}} and win {{3}}.", None),
    ("holiday_greetings", "en", "MARKETING", "APPROVED", "Season's greetings",
     "Happy holidays from all of us at {{1}}!", None),
)  # fmt: skip

_BUTTONS: Final[dict[str, list[dict[str, Any]]]] = {
    "shipping_update": [
        {"type": "URL", "text": "Track package", "url": "https://example.com/track/{{1}}"}
    ],
    "appointment_reminder": [
        {"type": "QUICK_REPLY", "text": "Confirm"},
        {"type": "QUICK_REPLY", "text": "Reschedule"},
    ],
    "abandoned_cart": [{"type": "URL", "text": "View cart", "url": "https://example.com/cart"}],
}


def _template(
    name: str,
    language: str,
    category: str,
    status: str,
    header: str | None,
    body: str,
    footer: str | None,
) -> dict[str, Any]:
    components: list[dict[str, Any]] = []
    if header is not None:
        components.append({"type": "HEADER", "format": "TEXT", "text": header})
    components.append({"type": "BODY", "text": body})
    if footer is not None:
        components.append({"type": "FOOTER", "text": footer})
    if language == "en" and name in _BUTTONS:
        components.append({"type": "BUTTONS", "buttons": _BUTTONS[name]})
    return {
        "name": name,
        "language": language,
        "status": status,
        "category": category,
        "components": components,
    }


#: The default catalogue of :class:`FakeAPIMW` (``templates=`` replaces it). Treat as read-only:
#: the server works on its own deep copy.
DEFAULT_TEMPLATES: Final[tuple[dict[str, Any], ...]] = tuple(_template(*row) for row in _ROWS)
