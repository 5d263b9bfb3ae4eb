"""The ``email`` destination: one email per delivery, over SMTP (aiosmtplib).

Options (``destinations.<name>``)::

    host: smtp.example.com
    port: 587                     # default: 465 with tls, 587 with starttls, 25 with neither
    starttls: true                # default; the server MUST offer STARTTLS or nothing is sent
    tls: false                    # true: implicit TLS from the first byte (port 465)
    ca_file: /etc/ssl/private-ca.pem   # trust this CA instead of the system's (private relays)
    username: gateway             # AUTH after TLS; give both or neither
    password: ${SMTP_PASSWORD}
    from: "Callback gateway <gw@example.com>"
    to: [support@example.com]     # one address or a list
    cc: []
    subject: "{{ event.status }}: {{ event.message_uuid }}"   # templates (plain text)
    body: "..."                   # the text part
    html: "..."                   # optional HTML part (autoescaped)
    timeout: 20s                  # the whole send: connect, TLS, AUTH, MAIL, RCPT, DATA
    digest:                       # optional: one email per window instead of one per event
      window: 5m                  # how long the oldest waiting event waits for company
      max_events: 100             # send at once when this many are waiting
      subject: "{{ count }} callbacks for {{ destination }}"   # sees count, events, destination

A plaintext relay needs ``starttls: false`` written out; ``tls`` and ``starttls`` exclude each
other. Templates are sandboxed Jinja2 over ``event`` and ``meta``, as for every destination.
The subject is one line (line breaks become spaces) of at most 200 characters. Each email
carries ``Message-ID: <delivery id@from-domain>``, the same for every try of a delivery, so a
mail system can recognise a repeat.

Classification (the engine owns retries; https://www.rfc-editor.org/rfc/rfc5321#section-4.2.1):

- timeouts, connection and TLS failures, a dropped connection and 4xx replies: retry;
- 5xx replies (a refused sender, refused recipients, refused data, failed AUTH): permanent;
- a server that does not offer STARTTLS when it is required, or AUTH when credentials are set:
  permanent, with the reason (a configuration problem, not a passing one);
- some recipients refused: delivered when at least one accepted the mail (retrying would send
  the others a copy again); the refused ones and their replies are in the outcome's error text
  and ``details["refused"]``. When every recipient is refused, retry if any refusal was 4xx,
  else permanent.

Digest: the engine holds this destination's deliveries until the oldest has waited ``window`` or
``max_events`` are waiting, then hands them over as one batch (`deliver_batch`): one email whose
body is the ``body`` template rendered for each event, separated by a rule (and the ``html``
parts likewise). The outcome applies to every delivery of the batch, and each delivery keeps its
own record and attempt history; a digest that fails is retried like any delivery, so nothing
waits in memory and a crash loses nothing.
"""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
import ssl
from email.message import EmailMessage
from typing import Annotated, Any

import aiosmtplib
from jinja2 import Template
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from gateway import hookimpl
from gateway.config.redact import scrub
from gateway.destination import (
    Batching,
    Outcome,
    Services,
    compile_template,
    environment,
    render_error,
    template_context,
)
from gateway.store import DeliveryRecord
from gateway.units import parse_duration

Duration = Annotated[float, BeforeValidator(parse_duration)]

DEFAULT_SUBJECT = (
    "[{{ meta.source }}] {{ event.channel_type }} {{ event.status or event.callback_event }}"
    " {{ event.message_uuid }}"
)
DEFAULT_BODY = """\
{{ event.status_text or event.status or event.callback_event }}

{% for key, value in event.items() %}{{ key }}: {{ value }}
{% endfor %}
source {{ meta.source }}, route {{ meta.route }}, received {{ meta.received_at }}
delivery {{ meta.id }}
"""
MAX_SUBJECT = 200
DEFAULT_DIGEST_SUBJECT = "{{ count }} callback events for {{ destination }}"
DIGEST_RULE = "\n" + "-" * 60 + "\n\n"


class DigestOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    window: Annotated[float, BeforeValidator(parse_duration)] = Field(gt=0)
    max_events: int = Field(default=100, ge=1, le=1000)
    subject: str = DEFAULT_DIGEST_SUBJECT


def _none_empty(value: Any) -> Any:
    return "" if value is None else value


# Overlays of the kit's sandbox: `null` prints as nothing, and the HTML part escapes what it
# prints.
TEXT_ENV = environment(finalize=_none_empty)
HTML_ENV = environment(finalize=_none_empty, autoescape=True)


def _compile(source: str, env: Any) -> Template:
    """`source` compiled; `ValueError` for a syntax error (its key path comes from pydantic)."""
    try:
        return compile_template(source, "template", env)
    except ValueError as e:
        raise ValueError(str(e).removeprefix("template: ")) from None


def _address(value: str) -> str:
    """`value` if it is one mail address (``a@b`` or ``Name <a@b>``)."""
    name, addr = email.utils.parseaddr(value)
    if (
        not addr
        or "@" not in addr
        or addr.startswith("@")
        or addr.endswith("@")
        or ("," in value and not name)
    ):
        raise ValueError(f"not a mail address: {value!r}")
    return value


def _addresses(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class EmailOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    starttls: bool | None = None
    tls: bool = False
    ca_file: str | None = None
    username: str | None = None
    password: str | None = None
    from_: str = Field(alias="from")
    to: Annotated[list[str], BeforeValidator(_addresses)] = Field(min_length=1)
    cc: Annotated[list[str], BeforeValidator(_addresses)] = []
    subject: str = DEFAULT_SUBJECT
    body: str = DEFAULT_BODY
    html: str | None = None
    timeout: Duration = Field(default=20.0, gt=0)
    digest: DigestOptions | None = None

    @field_validator("from_")
    @classmethod
    def _from(cls, v: str) -> str:
        return _address(v)

    @field_validator("to", "cc")
    @classmethod
    def _list(cls, v: list[str]) -> list[str]:
        return [_address(a) for a in v]

    @field_validator("subject", "body")
    @classmethod
    def _text(cls, v: str) -> str:
        _compile(v, TEXT_ENV)
        return v

    @field_validator("html")
    @classmethod
    def _html(cls, v: str | None) -> str | None:
        if v is not None:
            _compile(v, HTML_ENV)
        return v

    @model_validator(mode="after")
    def _transport(self) -> EmailOptions:
        if self.tls and self.starttls:
            raise ValueError("'tls: true' (implicit TLS) and 'starttls: true' exclude each other")
        if (self.username is None) != (self.password is None):
            raise ValueError("give both 'username' and 'password', or neither")
        return self

    @property
    def use_starttls(self) -> bool:
        """STARTTLS is required unless `tls` is on or ``starttls: false`` is written."""
        return not self.tls and self.starttls is not False

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 465 if self.tls else 587 if self.use_starttls else 25


#: The name the model is imported under (``from gateway_plugins.email import Options``).
Options = EmailOptions


class SendFailed(Exception):
    """A send ended with `outcome` (raised inside the session to leave it early)."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.error)
        self.outcome = outcome


class Email:
    """See the module docstring."""

    Options = EmailOptions

    def __init__(self, name: str, options: EmailOptions, services: Services) -> None:
        self.name = name
        self.options = options
        self.services = services
        self.subject = _compile(options.subject, TEXT_ENV)
        self.body = _compile(options.body, TEXT_ENV)
        self.html = _compile(options.html, HTML_ENV) if options.html else None
        digest = options.digest
        self.digest_subject = _compile(digest.subject, TEXT_ENV) if digest else None
        #: A digest: the engine hands over batches (`gateway.destination.BatchDestination`).
        self.batching = Batching(digest.window, digest.max_events) if digest else None
        self.secrets = set(services.secrets) | ({options.password} if options.password else set())
        self.sender = email.utils.parseaddr(options.from_)[1]
        self.recipients = [email.utils.parseaddr(a)[1] for a in [*options.to, *options.cc]]
        self.domain = self.sender.rpartition("@")[2]
        self.tls_context: ssl.SSLContext | None = None
        if options.tls or options.use_starttls:
            self.tls_context = ssl.create_default_context(cafile=options.ca_file)

    def message(self, delivery: DeliveryRecord) -> EmailMessage:
        """The email for `delivery`; `ValueError` when a template fails."""
        context = template_context(delivery)
        try:
            subject = self.subject.render(context)
            text = self.body.render(context)
            html = self.html.render(context) if self.html else None
        except Exception as e:  # sandbox violations, filter errors
            raise ValueError(render_error(e)) from None
        return self._compose(subject, text, html, delivery.id)

    def digest_message(self, deliveries: list[DeliveryRecord]) -> EmailMessage:
        """One email listing `deliveries` (``body`` rendered per event); `ValueError` when a
        template fails."""
        contexts = [template_context(d) for d in deliveries]
        assert self.digest_subject is not None
        try:
            subject = self.digest_subject.render(
                count=len(deliveries),
                events=[c["event"] for c in contexts],
                destination=self.name,
            )
            texts = [self.body.render(c) for c in contexts]
            htmls = [self.html.render(c) for c in contexts] if self.html else None
        except Exception as e:
            raise ValueError(render_error(e)) from None
        count = f"{len(deliveries)} event{'s' if len(deliveries) != 1 else ''}"
        text = f"{count}:\n\n" + DIGEST_RULE.join(texts)
        html = f"<p>{count}:</p>" + "<hr>".join(htmls) if htmls is not None else None
        # Stable for the same batch: its first delivery names it.
        return self._compose(subject, text, html, f"{deliveries[0].id}.digest")

    def _compose(self, subject: str, text: str, html: str | None, ident: str) -> EmailMessage:
        subject = " ".join(subject.split())
        if len(subject) > MAX_SUBJECT:
            subject = subject[: MAX_SUBJECT - 1] + "…"
        msg = EmailMessage(policy=email.policy.SMTP)
        msg["From"] = self.options.from_
        msg["To"] = ", ".join(self.options.to)
        if self.options.cc:
            msg["Cc"] = ", ".join(self.options.cc)
        msg["Subject"] = subject
        msg["Date"] = email.utils.formatdate(self.services.clock.now(), usegmt=True)
        msg["Message-ID"] = f"<{ident}@{self.domain}>"
        msg.set_content(text)
        if html is not None:
            msg.add_alternative(html, subtype="html")
        return msg

    def _scrub(self, text: str) -> str:
        return scrub(text, self.secrets)

    async def deliver(self, delivery: DeliveryRecord) -> Outcome:
        try:
            msg = self.message(delivery)
        except ValueError as e:
            return Outcome.permanent(self._scrub(str(e)))
        return await self._deliver(msg)

    async def deliver_batch(self, deliveries: list[DeliveryRecord]) -> Outcome:
        """The digest of `deliveries` as one email; the outcome applies to each of them."""
        try:
            msg = self.digest_message(deliveries)
        except ValueError as e:
            return Outcome.permanent(self._scrub(str(e)))
        return await self._deliver(msg)

    async def _deliver(self, msg: EmailMessage) -> Outcome:
        timeout = self.options.timeout
        try:
            async with asyncio.timeout(timeout):
                return await self._send(msg)
        except SendFailed as e:
            return e.outcome
        except (TimeoutError, aiosmtplib.SMTPTimeoutError):
            return Outcome.retry(f"SMTP: timed out after {timeout:g}s")
        except aiosmtplib.SMTPRecipientsRefused as e:
            return self._all_refused(e.recipients)
        except aiosmtplib.SMTPResponseException as e:
            return self._reply(e.code, e.message, type(e).__name__)
        except (aiosmtplib.SMTPException, OSError) as e:  # connection, TLS, disconnects
            what = str(e) or type(e).__name__
            return Outcome.retry(self._scrub(f"SMTP connection problem: {what}"))

    async def _send(self, msg: EmailMessage) -> Outcome:
        opts = self.options
        smtp = aiosmtplib.SMTP(
            hostname=opts.host,
            port=opts.effective_port,
            use_tls=opts.tls,
            start_tls=False,
            timeout=opts.timeout,
            tls_context=self.tls_context,
        )
        await smtp.connect()
        try:
            await smtp.ehlo()  # the extensions the server offers (connect() does not ask)
            if opts.use_starttls:
                if not smtp.supports_extension("starttls"):
                    raise SendFailed(
                        Outcome.permanent(
                            f"SMTP server {opts.host}:{opts.effective_port} does not offer"
                            " STARTTLS, which is required (set 'tls: true' for implicit TLS, or"
                            " 'starttls: false' only for a trusted plaintext relay)"
                        )
                    )
                await smtp.starttls()
                await smtp.ehlo()  # RFC 3207: forget what was offered before TLS, ask again
            if opts.username is not None:
                if not smtp.supports_extension("auth"):
                    raise SendFailed(
                        Outcome.permanent(
                            f"SMTP server {opts.host}:{opts.effective_port} does not offer AUTH"
                            " but 'username' is set"
                        )
                    )
                await smtp.login(opts.username, opts.password or "")
            refused, _ = await smtp.send_message(
                msg, sender=self.sender, recipients=self.recipients
            )
        finally:
            try:
                await smtp.quit()
            except (aiosmtplib.SMTPException, OSError):
                smtp.close()
        status = 250  # DATA was accepted (anything else raised SMTPDataError)
        if not refused:
            return Outcome.delivered(status)
        listed = {addr: f"{r.code} {r.message}" for addr, r in refused.items()}
        text = "; ".join(f"{a}: {why}" for a, why in listed.items())
        return Outcome(
            "delivered",
            status,
            self._scrub(
                f"accepted for {len(self.recipients) - len(refused)} of {len(self.recipients)}"
                f" recipients; refused {text}"
            ),
            details={"refused": listed},
        )

    def _reply(self, code: int, message: str, what: str) -> Outcome:
        text = self._scrub(f"SMTP {code} {message}".strip() + f" ({what})")
        if 400 <= code < 500:
            return Outcome.retry(text, code)
        if 500 <= code < 600:
            return Outcome.permanent(text, code)
        return Outcome.retry(text, code or None)

    def _all_refused(self, refusals: list[aiosmtplib.SMTPRecipientRefused]) -> Outcome:
        text = self._scrub(
            "SMTP refused every recipient: "
            + "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in refusals)
        )
        codes = [r.code for r in refusals]
        if any(400 <= c < 500 for c in codes):
            return Outcome.retry(text, min(codes))
        return Outcome.permanent(text, max(codes) if codes else None)


@hookimpl
def register_destinations(register: Any) -> None:
    register("email", Email)
