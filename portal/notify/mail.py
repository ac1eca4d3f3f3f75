"""Email over SMTP (the standard library's ``smtplib`` and ``email``), handed over with care.

An SMTP server takes responsibility for a message when it answers the final
dot of the DATA command. A run that dies after that answer and before it
records the send would, on a naive retry, send the message again; one that
records first and dies before the dot would lose it. So the delivery is in
two steps (RFC 1047's advice): everything but the final dot is written,
then the message is recorded ``handed_over`` and committed, then the dot is
sent. A run that dies before the record leaves the server with a transaction
it never completed, which it discards, and the message is sent again later;
one that dies after it leaves a message the server has, and the outbox counts
it as sent. Only a crash in the instant between the commit and the dot
leaves a message recorded and not sent, the one case no protocol closes.
``smtplib.SMTP.data`` writes the message and the dot in one call, so the two
steps here use its lower-level ``docmd``/``send``/``getreply``.
"""

from __future__ import annotations

import re
import smtplib
import ssl
from collections.abc import Callable
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from email.utils import format_datetime, parseaddr

from portal.notify.delivery import Delivered, Outcome
from portal.notify.messages import AlertMessage, Links, Rendered
from portal.notify.settings import MailSettings

TIMEOUT_SECONDS = 15.0
"""For each network operation of a delivery; the outbox's lease outlasts a delivery."""


def compose(
    message: AlertMessage, rendered: Rendered, links: Links, settings: MailSettings
) -> EmailMessage:
    """The email: plain text and HTML, and the headers that let a mailbox unsubscribe at once.

    The parts are quoted-printable, 7-bit clean for any server. Headers are
    too (a display name outside ASCII is encoded, RFC 2047) unless an
    address is outside ASCII: then the whole message is UTF-8, which needs
    the SMTPUTF8 extension (``send`` asks for it, and checks the server has it).
    """
    utf8 = _needs_smtputf8(settings.sender, message.recipient_email)
    email = EmailMessage(policy=SMTPUTF8 if utf8 else SMTP)
    email["From"] = settings.sender
    email["To"] = Address(display_name=message.recipient_name, addr_spec=message.recipient_email)
    email["Subject"] = rendered.subject
    email["Date"] = format_datetime(message.detected_at)
    # The event id: a retried message is the same message, and mail systems know it by this.
    email["Message-ID"] = f"<{message.event_id}@{_domain(settings.sender)}>"
    email["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to it
    email["List-Unsubscribe"] = f"<{links.unsubscribe}>"
    email["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"  # RFC 8058
    email.set_content(rendered.text, cte="quoted-printable")
    email.add_alternative(rendered.html, subtype="html", cte="quoted-printable")
    return email


def send(settings: MailSettings, email: EmailMessage, on_handover: Callable[[], bool]) -> Delivered:
    """Deliver one email; ``on_handover`` records it just before the final dot.

    When ``on_handover`` finds that another run holds the message now, the
    connection is closed before the dot: the server drops what it has.
    """
    handover = _Handover(on_handover)
    try:
        smtp = _connect(settings)
    except smtplib.SMTPResponseException as error:
        return _answered(error.smtp_code, error.smtp_error)
    except smtplib.SMTPNotSupportedError as error:  # no TLS: the operator's to fix; kept till then
        return Delivered(Outcome.RETRY, f"SMTP server not used: {_words(error)}")
    except (smtplib.SMTPException, OSError) as error:  # refused, timed out
        return Delivered(Outcome.RETRY, f"SMTP server unreachable: {_words(error)}")
    try:
        return _transact(smtp, settings, email, handover)
    except _TakenOver:
        return Delivered(Outcome.TAKEN_OVER, "another run holds this message now")
    except smtplib.SMTPResponseException as error:
        return _answered(error.smtp_code, error.smtp_error)
    except (smtplib.SMTPException, OSError) as error:  # dropped, timed out
        if handover.dot_sent:
            return Delivered(
                Outcome.SENT,
                f"the server had the whole message but did not confirm it ({_words(error)}); "
                "counted as sent",
            )
        return Delivered(Outcome.RETRY, f"SMTP connection lost: {_words(error)}")
    finally:
        # No QUIT: after the dot the server has the message, and before it a QUIT would
        # be read as part of the message. Closing ends an unfinished transaction.
        smtp.close()


class _Handover:
    def __init__(self, record: Callable[[], bool]) -> None:
        self.record = record
        self.dot_sent = False


class _TakenOver(Exception):
    """The hand-over could not be recorded: this run no longer holds the message."""


def _connect(settings: MailSettings) -> smtplib.SMTP:
    context = ssl.create_default_context()
    if settings.implicit_tls:
        return smtplib.SMTP_SSL(
            settings.host, settings.port, timeout=TIMEOUT_SECONDS, context=context
        )
    smtp = smtplib.SMTP(settings.host, settings.port, timeout=TIMEOUT_SECONDS)
    smtp.ehlo()
    if smtp.has_extn("starttls"):
        smtp.starttls(context=context)
        smtp.ehlo()
    elif not settings.plain_allowed:
        smtp.close()
        # Emails carry unsubscribe links, and the login a password: never readable on the way.
        raise smtplib.SMTPNotSupportedError(
            "the server offers no STARTTLS; only a server on this machine may be spoken to "
            "unencrypted (smtp://127.0.0.1, smtp://localhost)"
        )
    return smtp


def _transact(
    smtp: smtplib.SMTP,
    settings: MailSettings,
    email: EmailMessage,
    handover: _Handover,
) -> Delivered:
    if settings.username:
        smtp.login(settings.username, settings.password or "")
    sender = parseaddr(settings.sender)[1]
    recipient = str(email["To"].addresses[0].addr_spec)
    options: list[str] = []
    if _needs_smtputf8(settings.sender, recipient):
        if not smtp.has_extn("smtputf8"):
            return Delivered(
                Outcome.FAILED, f"the mail server takes no address outside ASCII ({recipient})"
            )
        options = ["SMTPUTF8", "BODY=8BITMIME"]
    code, reply = smtp.mail(sender, options)
    if code != 250:
        return _answered(code, reply)
    code, reply = smtp.rcpt(recipient)
    if code not in (250, 251):
        return _answered(code, reply)
    code, reply = smtp.docmd("DATA")
    if code != 354:
        return _answered(code, reply)
    smtp.send(_dot_stuffed(email.as_bytes()))
    if not handover.record():
        raise _TakenOver
    smtp.send(b".\r\n")
    handover.dot_sent = True
    code, reply = smtp.getreply()
    if code != 250:
        return _answered(code, reply)
    return Delivered(Outcome.SENT)


def _needs_smtputf8(sender: str, recipient: str) -> bool:
    """Whether the envelope's addresses (not a display name) are outside ASCII."""
    return not (parseaddr(sender)[1] + recipient).isascii()


def _answered(code: int, reply: bytes | str) -> Delivered:
    """An SMTP reply other than success: 4xx may pass, 5xx will not (RFC 5321)."""
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else reply
    outcome = Outcome.RETRY if 400 <= code < 500 else Outcome.FAILED
    return Delivered(outcome, f"SMTP {code}: {text}")


def _dot_stuffed(message: bytes) -> bytes:
    """The DATA payload: lines starting with a dot doubled (RFC 5321 4.5.2), ending in CRLF."""
    stuffed = re.sub(rb"(?m)^\.", b"..", message)
    return stuffed if stuffed.endswith(b"\r\n") else stuffed + b"\r\n"


def _words(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _domain(sender: str) -> str:
    return parseaddr(sender)[1].rpartition("@")[2] or "localhost"
