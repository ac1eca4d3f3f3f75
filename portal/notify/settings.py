"""Notification settings, read from the environment and checked before any work.

``SMTP_URL`` and ``MAIL_FROM`` set up email; ``NOTIFY_WEBHOOK_URL`` and
``NOTIFY_WEBHOOK_SECRET`` the signed webhook. A channel without its settings is
off: no message is written for it. ``flask send-notifications`` with neither
exits 2.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from email.errors import HeaderParseError
from email.headerregistry import Address
from urllib.parse import unquote, urlsplit

from portal.config import ConfigError

SETTING_PREFIXES = ("SMTP_", "MAIL_", "NOTIFY_")
SMTP_PORTS = {"smtp": 587, "smtps": 465}
MIN_WEBHOOK_SECRET_LENGTH = 24
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class MailSettings:
    host: str
    port: int
    implicit_tls: bool
    """``smtps://``: TLS from the first byte. ``smtp://`` upgrades with STARTTLS, which the
    server must offer unless it runs on this machine (``plain_allowed``)."""
    username: str | None
    password: str | None
    sender: str

    @property
    def plain_allowed(self) -> bool:
        """A server on the loopback interface may be spoken to without TLS: nothing is on the
        way to read it (a local relay, a development sink)."""
        return self.host in LOOPBACK_HOSTS

    def __repr__(self) -> str:  # never the password, not even in a traceback
        scheme = "smtps" if self.implicit_tls else "smtp"
        user = f"{self.username}:***@" if self.username else ""
        return f"MailSettings({scheme}://{user}{self.host}:{self.port}, sender={self.sender!r})"


@dataclass(frozen=True)
class WebhookSettings:
    url: str
    secret: str

    def __repr__(self) -> str:
        return f"WebhookSettings(url={self.url!r}, secret=***)"


@dataclass(frozen=True)
class NotifySettings:
    mail: MailSettings | None
    webhook: WebhookSettings | None

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels set up, in the order messages are written."""
        return tuple(
            name for name, settings in (("email", self.mail), ("webhook", self.webhook)) if settings
        )


def notify_environ(config: Mapping[str, object]) -> dict[str, str]:
    """The environment, overridden by the notification settings an app was created with."""
    configured = {
        name: str(value)
        for name, value in config.items()
        if name.startswith(SETTING_PREFIXES) and value is not None
    }
    return {**os.environ, **configured}


def load_notify_settings(environ: Mapping[str, str]) -> NotifySettings:
    """Both channels' settings; ``ConfigError`` names the first one that is malformed."""
    return NotifySettings(mail=_mail(environ), webhook=_webhook(environ))


def _mail(environ: Mapping[str, str]) -> MailSettings | None:
    url = environ.get("SMTP_URL", "").strip()
    sender = environ.get("MAIL_FROM", "").strip()
    if not url:
        if sender:
            raise ConfigError("MAIL_FROM is set but SMTP_URL is not: set both to send email")
        return None
    parts = urlsplit(url)
    if parts.scheme not in SMTP_PORTS or not parts.hostname:
        raise ConfigError(
            "SMTP_URL must look like smtp://user:password@mail.example.com:587 "
            "(or smtps:// for TLS from the start)"
        )
    try:
        port = parts.port or SMTP_PORTS[parts.scheme]
    except ValueError:
        raise ConfigError("SMTP_URL has a port that is not a number from 1 to 65535") from None
    if not sender:
        raise ConfigError("MAIL_FROM is required with SMTP_URL: the address emails come from")
    try:
        Address(addr_spec=sender.rsplit("<", 1)[-1].rstrip(">").strip())
    except (HeaderParseError, ValueError, IndexError):
        raise ConfigError(f"MAIL_FROM must be an email address, got {sender!r}") from None
    return MailSettings(
        host=parts.hostname,
        port=port,
        implicit_tls=parts.scheme == "smtps",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        sender=sender,
    )


def _webhook(environ: Mapping[str, str]) -> WebhookSettings | None:
    url = environ.get("NOTIFY_WEBHOOK_URL", "").strip()
    secret = environ.get("NOTIFY_WEBHOOK_SECRET", "").strip()
    if not url:
        if secret:
            raise ConfigError("NOTIFY_WEBHOOK_SECRET is set but NOTIFY_WEBHOOK_URL is not")
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"NOTIFY_WEBHOOK_URL must be an http(s):// URL, got {url!r}")
    if len(secret) < MIN_WEBHOOK_SECRET_LENGTH:
        raise ConfigError(
            f"NOTIFY_WEBHOOK_SECRET must be at least {MIN_WEBHOOK_SECRET_LENGTH} characters "
            "(the key the webhook's signature is made with)"
        )
    return WebhookSettings(url=url, secret=secret)
