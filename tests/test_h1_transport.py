"""The HTTP/1.1 transport (gateway/destination/h1.py) against real loopback peers.

Every peer is an `asyncio.start_server` on 127.0.0.1 that reads requests and writes raw HTTP
bytes, so each test controls exactly what the client sees (a body split in odd places, a close
mid-body, garbage, silence) and records exactly what the client sent, and on which connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from gateway_process import free_port

from gateway.clock import SystemClock
from gateway.destination.base import Outcome, Services
from gateway.destination.h1 import HIGH_WATER, H1Transport
from gateway.destination.http import MAX_READ, GatewayClient, make_http_client, read_capped
from gateway.destination.http_destination import Answer as HTTPAnswer
from gateway.destination.http_destination import HTTPDestination

#: How long a test waits for something the peer must see before giving up (a failure, not a
#: timing assumption: everything here happens in well under this on loopback).
WAIT = 3.0


def _blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclass
class Req:
    """One request as the peer read it off the wire."""

    conn: int  # which accepted connection (0, 1, ...) carried it
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


async def _read_request(conn: int, reader: asyncio.StreamReader) -> Req | None:
    """The next request on `reader`, or None when the client closed the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head[:-4].decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ")
    assert version == "HTTP/1.1", lines[0]
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    req = Req(conn, method, target, headers, b"")
    assert not req.values("transfer-encoding"), "the client must send a Content-Length body"
    lengths = req.values("content-length")
    if lengths:
        req.body = await reader.readexactly(int(lengths[0]))
    return req


Answer = Callable[["RawServer", Req, asyncio.StreamWriter], Awaitable[bool]]


class RawServer:
    """A loopback peer: `answer(server, request, writer)` writes the raw response and returns
    whether to keep reading requests on that connection (False closes it)."""

    def __init__(self, answer: Answer, ssl_context: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.ssl_context = ssl_context
        self.accepted = 0
        self.open_now = 0
        self.max_open = 0
        self.ended: set[int] = set()  # connections whose handler finished (closed)
        self.requests: list[Req] = []
        self.held: list[asyncio.Future[None]] = []
        self._cond = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(
            self._connected, "127.0.0.1", 0, ssl=self.ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def changed(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(predicate), WAIT)

    async def hold(self) -> None:
        """Park the current answer until the test resolves its future in `held`."""
        fut = asyncio.get_running_loop().create_future()
        self.held.append(fut)
        await self.changed()
        await fut

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = self.accepted
        self.accepted += 1
        self.open_now += 1
        self.max_open = max(self.max_open, self.open_now)
        await self.changed()
        try:
            while True:
                req = await _read_request(conn, reader)
                if req is None:
                    break
                self.requests.append(req)
                await self.changed()
                keep = await self.answer(self, req, writer)
                await writer.drain()
                if not keep:
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client went away, or the test is over (`__aexit__` cancels handlers)
        finally:
            self.open_now -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
            self.ended.add(conn)
            self._tasks.discard(task)
            with contextlib.suppress(RuntimeError):  # the loop may be going away
                await self.changed()


def response(
    status: int = 200,
    body: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
    reason: str = "OK",
    length: bool = True,
) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{n}: {v}" for n, v in headers or []]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def ok(server: RawServer, req: Req, writer: asyncio.StreamWriter) -> bool:
    writer.write(response(200, f"ok {req.target}".encode()))
    return True


# -- 1. keep-alive and the request on the wire ------------------------------------------------


async def test_sequential_posts_reuse_one_connection_and_arrive_byte_exact():
    sent = []
    async with RawServer(ok) as srv, make_http_client("h1") as client:
        for i in range(20):
            body = _blob(i * 97, seed=i) + b"\r\n\r\nHTTP/1.1 200 OK\r\n"  # framing-like bytes
            path = f"/hooks/in?seq={i}&tag=a%20b&empty="
            resp = await client.post(
                srv.url + path,
                content=body,
                headers={"X-Signature": f"sig-{i}", "Content-Type": "application/octet-stream"},
            )
            assert resp.status_code == 200
            assert resp.content == f"ok {path}".encode()
            sent.append((path, body))
    assert len(srv.requests) == 20
    for i, (req, (path, body)) in enumerate(zip(srv.requests, sent, strict=True)):
        assert req.method == "POST"
        assert req.target == path
        assert req.values("host") == [f"127.0.0.1:{srv.port}"]
        assert req.values("content-length") == [str(len(body))]
        assert req.body == body
        assert req.values("x-signature") == [f"sig-{i}"]
        assert req.values("content-type") == ["application/octet-stream"]
        assert req.values("user-agent")[0].startswith("callback-gateway/")
    assert srv.accepted == 1, "20 sequential requests must share one keep-alive connection"
    assert [r.conn for r in srv.requests] == [0] * 20


# -- 2. response bodies -------------------------------------------------------------------


LENGTH_BODY = _blob(3 * HIGH_WATER + 17, seed=1)  # several times the pause threshold
CHUNKS = [b"a", _blob(5000, seed=2), _blob(2 * HIGH_WATER + 3, seed=3), b"", b"end"]
EOF_BODY = _blob(2 * HIGH_WATER + 5, seed=4)


async def bodies(server: RawServer, req: Req, writer: asyncio.StreamWriter) -> bool:
    if req.target == "/length":
        head = response(200, LENGTH_BODY)
        writer.write(head[:-1000])  # the body split somewhere in the middle
        await writer.drain()
        writer.write(head[-1000:])
        return True
    if req.target == "/chunked":
        writer.write(response(200, headers=[("Transfer-Encoding", "chunked")], length=False))
        for chunk in CHUNKS:
            if chunk:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
        writer.write(b"0\r\n\r\n")
        return True
    assert req.target == "/eof"
    writer.write(response(200, headers=[("Content-Type", "text/plain")], length=False))
    await writer.drain()
    writer.write(EOF_BODY)
    return False  # the end of the connection ends the body


async def test_length_chunked_and_close_delimited_bodies_are_read_completely():
    async with RawServer(bodies) as srv, make_http_client("h1") as client:
        r1 = await client.get(srv.url + "/length")
        r2 = await client.get(srv.url + "/chunked")
        r3 = await client.get(srv.url + "/eof")
        r4 = await client.get(srv.url + "/length")
    assert (r1.status_code, r2.status_code, r3.status_code, r4.status_code) == (200,) * 4
    assert r1.content == LENGTH_BODY
    assert r2.content == b"".join(CHUNKS)
    assert r3.content == EOF_BODY
    assert r4.content == LENGTH_BODY
    # Length and chunked bodies leave the connection reusable; the close-delimited one ends it.
    assert [r.conn for r in srv.requests] == [0, 0, 0, 1]


# -- 3. a capped read closes the connection -----------------------------------------------


BIG = _blob(2 * 1024 * 1024, seed=5)


async def big(server: RawServer, req: Req, writer: asyncio.StreamWriter) -> bool:
    writer.write(response(200, BIG if req.target == "/big" else b"small"))
    return True


async def test_read_capped_stops_early_and_the_connection_is_not_reused():
    async with RawServer(big) as srv, make_http_client("h1") as client:
        async with client.stream("GET", srv.url + "/big") as resp:
            data = await read_capped(resp)
        assert len(BIG) > MAX_READ
        assert data == BIG[:MAX_READ]
        after = await client.get(srv.url + "/small")
        assert after.status_code == 200
        assert after.content == b"small"
        await srv.wait_until(lambda: 0 in srv.ended)  # the client closed the first one
    assert [r.conn for r in srv.requests] == [0, 1]


# -- 4. peers that close early or answer garbage ------------------------------------------


def _closing_with(raw: bytes) -> Answer:
    async def answer(server: RawServer, req: Req, writer: asyncio.StreamWriter) -> bool:
        writer.write(raw)
        return False

    return answer


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        pytest.param(b"", httpx.RemoteProtocolError, id="close-without-answer"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Le", httpx.RemoteProtocolError, id="mid-head"),
        pytest.param(response(200, b"x" * 1000)[:-990], httpx.ReadError, id="mid-length-body"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            httpx.ReadError,
            id="mid-chunked-body",
        ),
        pytest.param(b"hello\r\n\r\n", httpx.RemoteProtocolError, id="garbage"),
    ],
)
async def test_a_peer_that_closes_early_or_answers_garbage_is_a_transport_error(raw, error):
    async with RawServer(_closing_with(raw)) as srv, make_http_client("h1") as client:
        with pytest.raises(httpx.TransportError) as info:
            await client.post(srv.url + "/in", content=b"[1]")
        # and the client is still usable afterwards, on a fresh connection
        srv.answer = ok
        again = await client.post(srv.url + "/again", content=b"[2]")
    assert type(info.value) is error, repr(info.value)
    assert srv.requests[0].body == b"[1]"
    assert again.status_code == 200
    assert [r.conn for r in srv.requests] == [0, 1]


# -- 5. silence ---------------------------------------------------------------------------


async def never(server: RawServer, req: Req, writer: asyncio.StreamWriter) -> bool:
    await asyncio.Event().wait()  # until the test's teardown cancels it
    return False


async def test_a_peer_that_never_answers_is_a_read_timeout():
    async with RawServer(never) as srv, make_http_client("h1") as client:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await client.post(srv.url + "/in", content=b"[]", timeout=httpx.Timeout(5, read=0.2))
        elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"the read timeout is 0.2 s, took {elapsed:.2f} s"
    assert len(srv.requests) == 1 and srv.requests[0].body == b"[]"


# -- 6. connection refused ----------------------------------------------------------------


async def test_a_refused_connection_is_a_connect_error_naming_host_and_port():
    port = free_port()  # bound and released: nothing listens there
    async with make_http_client("h1") as client:
        with pytest.raises(httpx.ConnectError) as info:
            await client.post(f"http://127.0.0.1:{port}/in", content=b"[]")
    assert str(info.value) == f"cannot connect to 127.0.0.1:{port}: Connection refused"


# -- 7. an idle connection the peer closed ------------------------------------------------


async def answer_then_close(server: RawServer, req: Req, writer: asyncio.StreamWriter) -> bool:
    writer.write(
        response(200, b"bye", [("Connection", "keep-alive"), ("Keep-Alive", "timeout=60")])
    )
    return False


async def test_an_idle_connection_closed_by_the_peer_is_replaced_once_it_is_gone():
    async with RawServer(answer_then_close) as srv, make_http_client("h1") as client:
        for i in range(5):
            resp = await client.get(srv.url + f"/r{i}")
            assert (resp.status_code, resp.content) == (200, b"bye")
            await srv.wait_until(lambda i=i: i in srv.ended)
    assert [r.conn for r in srv.requests] == [0, 1, 2, 3, 4]


async def test_a_connection_the_peer_closes_right_after_answering_is_not_reused():
    """No pause between the requests: the peer's close races the client's next request."""
    async with RawServer(answer_then_close) as srv, make_http_client("h1") as client:
        for i in range(5):
            resp = await client.get(srv.url + f"/r{i}")
            assert (resp.status_code, resp.content) == (200, b"bye")
    assert [r.conn for r in srv.requests] == [0, 1, 2, 3, 4]


# -- 8. the pool bound --------------------------------------------------------------------


async def held_ok(server: RawServer, req: Req, writer: asyncio.StreamWriter) -> bool:
    await server.hold()
    writer.write(response(200, f"ok {req.target}".encode()))
    return True


async def test_max_connections_bounds_open_connections_and_every_request_completes():
    async with (
        RawServer(held_ok) as srv,
        httpx.AsyncClient(transport=H1Transport(max_connections=2)) as client,
    ):
        tasks = [asyncio.create_task(client.get(srv.url + f"/r{i}")) for i in range(10)]
        answered = 0
        while answered < 10:
            want = min(2, 10 - answered)
            await srv.wait_until(lambda want=want: len(srv.held) >= want)
            assert srv.open_now <= 2, f"{srv.open_now} connections open at once"
            batch, srv.held[:] = list(srv.held), []
            for fut in batch:
                fut.set_result(None)
            answered += len(batch)
        results = await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
    assert [r.status_code for r in results] == [200] * 10
    assert [r.content for r in results] == [f"ok /r{i}".encode() for i in range(10)]
    assert srv.max_open <= 2
    assert srv.accepted == 2, "keep-alive: the two connections carry all ten requests"


async def test_a_waiter_woken_then_cancelled_passes_the_free_connection_on():
    """A request woken for a free connection but cancelled before it ran (a destination's
    own timeout) must not swallow the wake-up: the next waiter gets the connection."""
    async with (
        RawServer(ok) as srv,
        httpx.AsyncClient(transport=H1Transport(max_connections=1)) as client,
    ):
        first = await client.send(client.build_request("GET", srv.url + "/a"), stream=True)
        pool = httpx.Timeout(WAIT, pool=1.0)
        cancelled = asyncio.create_task(client.get(srv.url + "/b", timeout=pool))
        waiting = asyncio.create_task(client.get(srv.url + "/c", timeout=pool))
        for _ in range(5):  # both reach the pool's wait
            await asyncio.sleep(0)
        await first.aclose()  # frees the connection: wakes /b, which has not run yet
        cancelled.cancel()
        answer = await waiting
    assert answer.status_code == 200 and answer.content == b"ok /c"
    assert [r.target for r in srv.requests] == ["/a", "/c"]


# -- 9. Connection: close -----------------------------------------------------------------


async def close_header(server: RawServer, req: Req, writer: asyncio.StreamWriter) -> bool:
    writer.write(response(200, b"done", [("Connection", "close")]))
    return True  # keep the socket open and listening: only the header says "do not reuse"


async def test_a_connection_close_response_is_not_reused():
    async with RawServer(close_header) as srv, make_http_client("h1") as client:
        first = await client.get(srv.url + "/a")
        second = await client.get(srv.url + "/b")
        await srv.wait_until(lambda: 0 in srv.ended)  # the client closed the first one
    assert (first.content, second.content) == (b"done", b"done")
    assert [r.conn for r in srv.requests] == [0, 1]


# -- 10. responses without a body ---------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"HTTP/1.1 204 No Content\r\n\r\n", id="204"),
        pytest.param(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n', id="304"),
        pytest.param(
            b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 42\r\n\r\n',
            id="304-with-content-length",
        ),
    ],
)
async def test_204_and_304_complete_without_waiting_for_a_body(head):
    async def answer(server: RawServer, req: Req, writer: asyncio.StreamWriter) -> bool:
        writer.write(head if req.target == "/empty" else response(200, b"next"))
        return True  # the connection stays open: a client waiting for a body would time out

    timeout = httpx.Timeout(5, read=1.0)
    async with RawServer(answer) as srv, make_http_client("h1") as client:
        resp = await client.get(srv.url + "/empty", timeout=timeout)
        assert resp.content == b""
        after = await client.get(srv.url + "/after", timeout=timeout)
    assert resp.status_code == int(head[9:12])
    assert after.content == b"next"
    assert [r.conn for r in srv.requests] == [0, 0]  # and the connection stays usable


# -- 11. TLS certificates are verified ----------------------------------------------------


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        from cryptography import x509  # noqa: F401
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("neither the cryptography package nor the openssl command is available")
        args = "req -x509 -nodes -days 2 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1"
        names = "-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1"
        files = ["-keyout", str(key), "-out", str(cert)]
        subprocess.run(
            [openssl, *args.split(), *names.split(), *files], check=True, capture_output=True
        )
        return cert, key
    return _self_signed_with_cryptography(cert, key)


def _self_signed_with_cryptography(cert: Path, key: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


async def test_https_to_a_self_signed_server_is_refused_as_a_connect_error(tmp_path):
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    async with RawServer(ok, ssl_context=server_ctx) as srv:
        # Control: a client that trusts this certificate gets an answer, so the server works.
        trusting = ssl.create_default_context(cafile=str(cert))
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port, ssl=trusting)
        writer.write(b"GET /control HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n"), WAIT)).startswith(b"HTTP/1.1 200")
        writer.close()
        async with make_http_client("h1") as client:
            with pytest.raises(httpx.ConnectError) as info:
                await client.post(srv.url + "/in", content=b"[]")
    assert "certificate verify failed" in str(info.value).lower(), str(info.value)
    assert [r.target for r in srv.requests] == ["/control"]  # the h1 client sent nothing


async def test_https_with_a_trusted_certificate_is_delivered_and_kept_alive(tmp_path):
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))
    async with (
        RawServer(ok, ssl_context=server_ctx) as srv,
        httpx.AsyncClient(transport=H1Transport(ssl_context=trusting)) as client,
    ):
        answers = [await client.post(srv.url + f"/in{i}", content=b"[1]") for i in range(3)]
    assert [a.content for a in answers] == [b"ok /in0", b"ok /in1", b"ok /in2"]
    assert [r.body for r in srv.requests] == [b"[1]"] * 3
    assert srv.accepted == 1


@pytest.mark.parametrize("value", ["b\r\nX-Injected: 1", "b\nX-Injected: 1", "b\x00c"])
async def test_a_header_with_a_line_break_is_refused_before_anything_is_sent(value):
    async with RawServer(ok) as srv, make_http_client("h1") as client:
        with pytest.raises(httpx.LocalProtocolError):
            await client.post(srv.url + "/in", content=b"[]", headers={"X-Note": value})
        answer = await client.post(srv.url + "/after", content=b"[]")
    assert answer.status_code == 200
    assert [r.target for r in srv.requests] == ["/after"]
    assert not any(r.values("x-injected") for r in srv.requests)


# -- 8. HTTPDestination's direct path (no httpx client, request or response objects) ----------


def _destination(client: httpx.AsyncClient, timeout: float = WAIT) -> HTTPDestination:
    options = type("Options", (), {"timeout": timeout})()
    return HTTPDestination("hook", options, Services(client, SystemClock(), None))


def _sent(req: Req) -> list[tuple[str, str]]:
    return [(n.lower(), v) for n, v in req.headers if n.lower() != "accept-encoding"]


async def test_the_direct_path_sends_what_httpx_sends_and_reads_the_same_answer():
    async def answer(server: RawServer, req: Req, writer: asyncio.StreamWriter) -> bool:
        body = b"echo " + req.body
        writer.write(response(201, body, [("X-Seen", req.target), ("Retry-After", "7")]))
        return True

    headers = {"Content-Type": "application/json", "webhook-id": "msg_1", "X-Empty": ""}
    answers, requests = [], []
    async with RawServer(answer) as srv:
        for kind in ("h1", "httpx"):  # ours direct, then stock httpx through its client
            async with make_http_client(kind) as client:
                assert (getattr(client, "direct", None) is not None) == (kind == "h1")
                dest = _destination(client)
                for i in range(3):
                    url = f"{srv.url}/in?n={i}&q=a%20b"
                    answers.append(await dest.request("POST", url, b'{"n":%d}' % i, headers))
        requests = srv.requests
    assert len(requests) == 6
    for ours, stock in zip(requests[:3], requests[3:], strict=True):
        assert (ours.method, ours.target, ours.body) == (stock.method, stock.target, stock.body)
        assert _sent(ours) == _sent(stock)
        assert not ours.values("accept-encoding"), "bodies are read raw: none may be compressed"
    for ours, stock in zip(answers[:3], answers[3:], strict=True):
        assert isinstance(ours, HTTPAnswer) and isinstance(stock, HTTPAnswer)
        assert (ours.status, ours.body, ours.headers.get("x-seen")) == (
            stock.status,
            stock.body,
            stock.headers.get("x-seen"),
        )
        assert ours.headers.multi_items() == stock.headers.multi_items()
    assert {r.conn for r in requests[:3]} == {0}, "the direct path keeps the connection alive"


async def test_the_direct_path_caps_the_body_and_does_not_reuse_that_connection():
    big = _blob(MAX_READ * 3, seed=9)

    async def answer(server: RawServer, req: Req, writer: asyncio.StreamWriter) -> bool:
        writer.write(response(500, big if req.target == "/big" else b"small"))
        return True

    async with RawServer(answer) as srv, make_http_client("h1") as client:
        dest = _destination(client)
        first = await dest.request("POST", srv.url + "/big", b"x", {})
        second = await dest.request("POST", srv.url + "/small", b"x", {})
        await srv.wait_until(lambda: 0 in srv.ended)
    assert isinstance(first, HTTPAnswer) and first.body == big[:MAX_READ]
    assert isinstance(second, HTTPAnswer) and second.body == b"small"
    assert [r.conn for r in srv.requests] == [0, 1], "an unread rest of a body closes its conn"


async def test_the_direct_path_sends_one_host_and_refuses_a_header_line_break():
    async with RawServer(ok) as srv, make_http_client("h1") as client:
        dest = _destination(client)
        answer = await dest.request("POST", srv.url + "/h", b"", {"Host": "example.test"})
        refused = await dest.request("POST", srv.url + "/h", b"", {"X-Bad": "a\r\nX-Evil: 1"})
    assert isinstance(answer, HTTPAnswer) and answer.status == 200
    assert srv.requests[0].values("host") == ["example.test"]
    assert isinstance(refused, Outcome) and refused.kind == "retry"
    assert "line break" in (refused.error or "")
    assert len(srv.requests) == 1, "nothing of the refused request reached the peer"


async def test_a_direct_request_that_times_out_mid_body_gives_its_connection_back():
    async def stall(server: RawServer, req: Req, writer: asyncio.StreamWriter) -> bool:
        if req.target == "/stall":
            writer.write(response(200, b"x" * 10)[:-5])  # the head and half the body
            await writer.drain()
            await server.hold()
            return False
        writer.write(response(200, b"fine"))
        return True

    async with RawServer(stall) as srv, make_http_client("h1") as client:
        assert isinstance(client, GatewayClient) and client.direct is not None
        client.direct.max_connections = 1  # a leaked connection would block the next request
        dest = _destination(client, timeout=0.2)
        stalled = await dest.request("POST", srv.url + "/stall", b"", {})
        after = await dest.request("POST", srv.url + "/ok", b"", {})
        for fut in srv.held:
            fut.set_result(None)
    assert isinstance(stalled, Outcome) and stalled.kind == "retry"
    assert "timed out" in (stalled.error or "")
    assert isinstance(after, HTTPAnswer) and after.body == b"fine"
