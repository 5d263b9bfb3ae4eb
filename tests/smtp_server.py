"""A real SMTP server in the test process (aiosmtpd), scriptable, recording what it accepted.

    with SmtpServer(starttls=cert) as smtp:      # or tls=cert (implicit), or neither
        smtp.refuse_rcpt["gone@example.com"] = "550 5.1.1 No such user"
        smtp.data_reply = "451 4.3.0 Try again later"
        ... send to 127.0.0.1:smtp.port ...
        msg = smtp.messages[0]      # .mail_from, .rcpt_tos, .message (email.message), .tls, .login

`users` turns on AUTH (PLAIN/LOGIN; offered without TLS too, so tests can see credentials are
only sent where they should be). `make_cert(dir)` writes a self-signed certificate for 127.0.0.1
with ``openssl req`` and returns ``Cert(cert, key)``.
"""

from __future__ import annotations

import email
import email.policy
import socket
import ssl
import subprocess
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


def make_cert(directory: Path) -> Cert:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return Cert(cert, key)


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool
    login: str | None

    def text(self) -> str:
        """The plain-text part as a reader sees it (line ends as ``\\n``)."""
        part = self.message.get_body(("plain",))
        return _lines(part.get_content()) if part is not None else ""  # type: ignore[union-attr]

    def html(self) -> str | None:
        part = self.message.get_body(("html",))
        return _lines(part.get_content()) if part is not None else None  # type: ignore[union-attr]


def _lines(text: str) -> str:
    return text.replace("\r\n", "\n")


@dataclass
class _Handler:
    server: SmtpServer
    messages: list[Received] = field(default_factory=list)

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self.server.refuse_rcpt.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.server.data_reply:
            return self.server.data_reply
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)  # type: ignore[arg-type]
        auth = session.auth_data
        login = auth.login.decode() if isinstance(auth, LoginPassword) else None
        tls = session.ssl is not None or (  # STARTTLS, or implicit TLS from the first byte
            server.transport is not None
            and server.transport.get_extra_info("sslcontext") is not None
        )
        self.messages.append(
            Received(
                envelope.mail_from or "",
                list(envelope.rcpt_tos),
                msg,  # type: ignore[arg-type]
                tls,
                login,
            )
        )
        return "250 Message accepted for delivery"


class SmtpServer:
    def __init__(
        self,
        *,
        starttls: Cert | None = None,
        tls: Cert | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        self.refuse_rcpt: dict[str, str] = {}
        self.data_reply: str | None = None
        self.users = users
        #: (login, over TLS?) for every AUTH attempt.
        self.auth_attempts: list[tuple[str, bool]] = []
        self.handler = _Handler(self)
        self.port = _free_port()
        kwargs: dict[str, Any] = {"auth_require_tls": False}
        if starttls is not None:
            kwargs["tls_context"] = starttls.server_context()
        if tls is not None:
            kwargs["ssl_context"] = tls.server_context()
        if users is not None:
            kwargs["authenticator"] = self._authenticate
        self.controller = Controller(
            self.handler, hostname="127.0.0.1", port=self.port, ready_timeout=5.0, **kwargs
        )

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword) or self.users is None:
            return AuthResult(success=False, handled=False)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        self.auth_attempts.append((login, session.ssl is not None))
        return AuthResult(
            success=self.users.get(login) == password, handled=False, auth_data=auth_data
        )

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
