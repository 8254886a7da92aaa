"""Image URLs fetched safely (app/runtime/url_fetch.py): every refusal happens before a connection
is opened, redirects are re-checked, slow and endless bodies are cut off.

Traffic goes to loopback only. Refusal tests inject a resolver (a name can be made to resolve to a
private address without asking any DNS) and a connector that fails the test if it is called; the
tests that fetch start their own server on 127.0.0.1 and allow-list it, and their connector refuses
any address that is not loopback, so a bug in the checks cannot reach the network either.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from app.runtime.errors import ImageFailure, UrlError
from app.runtime.url_fetch import FetchPolicy, ImageUrl, Streams, UrlFetcher, open_tcp, refusal

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def policy(**kw: Any) -> FetchPolicy:
    return FetchPolicy(**{"enabled": True, "timeout_s": 5.0, **kw})


class NoConnection:
    """A connector that fails the test: the refusal had to come before any connection."""

    calls = 0

    async def __call__(
        self, address: str, port: int, tls: ssl.SSLContext | None, name: str | None
    ) -> Streams:
        self.calls += 1
        raise AssertionError(f"a connection to {address}:{port} was opened")


class LoopbackOnly:
    """The real connector, for loopback addresses only; records where it connected."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    async def __call__(
        self, address: str, port: int, tls: ssl.SSLContext | None, name: str | None
    ) -> Streams:
        assert ipaddress.ip_address(address).is_loopback, f"a test tried to connect to {address}"
        self.opened.append(address)
        return await open_tcp(address, port, tls, name)


def resolving(table: dict[str, list[str]]) -> Callable[[str, int], Awaitable[list[str]]]:
    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


async def serve(handler: Handler) -> tuple[asyncio.Server, int]:
    async def wrapped(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await r.readuntil(b"\r\n\r\n")
            await handler(r, w)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()

    server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def answer(status: str, body: bytes = b"", headers: str = "") -> Handler:
    async def h(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body)
        await w.drain()

    return h


def fetch(url_of: Callable[[int], str], handler: Handler, **kw: Any) -> tuple[bytes | UrlError, LoopbackOnly]:
    """Fetch url_of(port) from a loopback server running handler; the body or the UrlError."""
    connector = LoopbackOnly()

    async def main() -> bytes | UrlError:
        server, port = await serve(handler)
        fetcher = UrlFetcher(policy(allow=LOOPBACK, **kw), connector=connector)
        try:
            return await fetcher.fetch(url_of(port))
        except UrlError as e:
            return e
        finally:
            server.close()

    return asyncio.run(main()), connector


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("172.16.5.4", "private"),
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("100.64.0.1", "not a public"),  # carrier-grade NAT
        ("0.0.0.0", "unspecified"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),  # v4-mapped: judged as the IPv4 address it carries
        ("::ffff:10.0.0.1", "private"),
        ("2002:a00:1::", "private"),  # 6to4 of 10.0.0.1
        ("::10.0.0.1", "private"),  # v4-compatible
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ],
)
def test_addresses_that_are_not_public_are_refused_and_say_what_they_are(address: str, kind: str) -> None:
    why = refusal(ipaddress.ip_address(address))
    assert why is not None and kind in why, why


def test_public_addresses_pass_and_the_allow_list_admits_what_it_names() -> None:
    for a in ("93.184.216.34", "8.8.8.8", "2606:4700::1111"):
        assert refusal(ipaddress.ip_address(a)) is None
    allow = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.1.0.0/16"))
    assert refusal(ipaddress.ip_address("127.0.0.1"), allow) is None
    assert refusal(ipaddress.ip_address("::ffff:127.0.0.1"), allow) is None  # the same host
    assert refusal(ipaddress.ip_address("10.1.9.9"), allow) is None
    assert refusal(ipaddress.ip_address("10.2.0.1"), allow) is not None
    assert refusal(ipaddress.ip_address("::1"), allow) is not None  # allowing IPv4 loopback is not ::1


RESOLVER = resolving(
    {
        "internal.example": ["10.0.0.7"],
        "metadata.example": ["169.254.169.254"],
        "mixed.example": ["93.184.216.34", "192.168.1.1"],  # one bad address refuses the name
        "localhost": ["127.0.0.1", "::1"],
    }
)


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://10.1.2.3/a.png", "url_refused"),
        ("http://169.254.169.254/latest/meta-data/", "url_refused"),
        ("http://[::ffff:127.0.0.1]/a.png", "url_refused"),
        ("http://[::ffff:7f00:1]:8000/a.png", "url_refused"),
        ("http://[::1]/a.png", "url_refused"),
        ("http://127.0.0.1:8000/a.png", "url_refused"),
        ("https://[fd00:ec2::254]/", "url_refused"),
        ("http://internal.example/a.png", "url_refused"),
        ("http://metadata.example/latest", "url_refused"),
        ("http://mixed.example/a.png", "url_refused"),
        ("http://localhost:8080/", "url_refused"),
        ("ftp://example.com/a.png", "url_refused"),
        ("file:///etc/passwd", "url_refused"),
        ("gopher://127.0.0.1:6379/_INFO", "url_refused"),
        ("http://user:secret@example.com/a.png", "url_refused"),
        ("a.png", "url_refused"),
        ("http:///a.png", "invalid_url"),
        ("http://[::1/a.png", "invalid_url"),
        ("http://example.com:99999/a.png", "invalid_url"),
        ("http://" + "a" * 9000 + ".com/", "invalid_url"),
        ("http://nowhere.example/a.png", "url_unreachable"),  # does not resolve
    ],
)
def test_refused_before_any_connection_is_opened(url: str, code: str) -> None:
    connector = NoConnection()
    fetcher = UrlFetcher(policy(), resolver=RESOLVER, connector=connector)
    with pytest.raises(UrlError) as e:
        asyncio.run(fetcher.fetch(url))
    assert e.value.code == code, e.value.message
    assert connector.calls == 0


def test_off_by_default_and_saying_so() -> None:
    connector = NoConnection()
    fetcher = UrlFetcher(FetchPolicy(), resolver=RESOLVER, connector=connector)
    with pytest.raises(UrlError) as e:
        asyncio.run(fetcher.fetch("http://93.184.216.34/a.png"))
    assert e.value.code == "url_fetch_disabled" and "ZEROSHOT_URL_FETCH" in e.value.message
    assert connector.calls == 0


def test_an_allow_listed_loopback_server_is_fetched_from() -> None:
    body, connector = fetch(lambda p: f"http://127.0.0.1:{p}/a.png", answer("200 OK", b"\x89PNG-bytes"))
    assert body == b"\x89PNG-bytes"
    assert connector.opened == ["127.0.0.1"]


def test_a_chunked_body_and_a_relative_redirect_are_followed() -> None:
    async def h(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        await w.drain()

    hops = {"n": 0}

    async def router(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        hops["n"] += 1
        if hops["n"] == 1:
            await answer("302 Found", headers="Location: /final\r\n")(r, w)
        else:
            await h(r, w)

    body, connector = fetch(lambda p: f"http://127.0.0.1:{p}/start", router)
    assert body == b"hello world"
    assert connector.opened == ["127.0.0.1", "127.0.0.1"]


@pytest.mark.parametrize("target", ["http://169.254.169.254/latest/meta-data/", "http://[::ffff:10.0.0.1]/x"])
def test_a_redirect_to_a_refused_address_is_refused_before_connecting_there(target: str) -> None:
    result, connector = fetch(
        lambda p: f"http://127.0.0.1:{p}/r", answer("302 Found", headers=f"Location: {target}\r\n")
    )
    assert isinstance(result, UrlError) and result.code == "url_refused", result
    assert connector.opened == ["127.0.0.1"]  # the loopback server, and nothing after it


def test_redirects_are_bounded() -> None:
    result, connector = fetch(
        lambda p: f"http://127.0.0.1:{p}/loop", answer("302 Found", headers="Location: /loop\r\n")
    )
    assert isinstance(result, UrlError) and result.code == "url_unreachable"
    assert "more than 3 redirects" in result.message
    assert len(connector.opened) == 4  # the first request and three redirects


def test_a_slow_body_is_stopped_at_the_deadline() -> None:
    async def trickle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(1000):
            w.write(b"x")
            await w.drain()
            await asyncio.sleep(0.05)

    t = time.monotonic()
    result, _ = fetch(lambda p: f"http://127.0.0.1:{p}/slow", trickle, timeout_s=0.5)
    assert isinstance(result, UrlError) and result.code == "url_timeout", result
    assert time.monotonic() - t < 5


def test_an_endless_body_is_stopped_at_the_byte_cap() -> None:
    sent = {"bytes": 0}

    async def endless(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"
        while sent["bytes"] < 50_000_000:
            w.write(chunk)
            sent["bytes"] += len(chunk)
            await w.drain()

    result, _ = fetch(lambda p: f"http://127.0.0.1:{p}/endless", endless, max_bytes=100_000)
    assert isinstance(result, UrlError) and result.code == "url_too_large", result
    assert sent["bytes"] < 50_000_000  # the fetch hung up; the server did not run to its own end


def test_a_declared_length_over_the_cap_is_refused_without_reading_it() -> None:
    result, _ = fetch(lambda p: f"http://127.0.0.1:{p}/big", answer("200 OK", b"x" * 2000), max_bytes=1024)
    assert isinstance(result, UrlError) and result.code == "url_too_large" and "2000 bytes" in result.message


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        (answer("404 Not Found", b"nope"), "HTTP 404"),
        (answer("302 Found"), "without a Location"),
    ],
)
def test_an_error_answer_is_unreachable_with_its_reason(reply: Handler, words: str) -> None:
    result, _ = fetch(lambda p: f"http://127.0.0.1:{p}/x", reply)
    assert isinstance(result, UrlError) and result.code == "url_unreachable" and words in result.message


def test_a_malformed_response_and_a_closed_port_are_unreachable() -> None:
    async def garbage(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await w.drain()

    result, _ = fetch(lambda p: f"http://127.0.0.1:{p}/x", garbage)
    assert isinstance(result, UrlError) and result.code == "url_unreachable" and "malformed" in result.message
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fetcher = UrlFetcher(policy(allow=LOOPBACK), connector=LoopbackOnly())
    with pytest.raises(UrlError) as e:
        asyncio.run(fetcher.fetch(f"http://127.0.0.1:{port}/x"))
    assert e.value.code == "url_unreachable"


def test_concurrent_fetches_are_capped() -> None:
    state = {"open": 0, "most": 0}

    async def slow(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        state["open"] += 1
        state["most"] = max(state["most"], state["open"])
        await asyncio.sleep(0.1)
        state["open"] -= 1
        await answer("200 OK", b"ok")(r, w)

    async def main() -> list[bytes]:
        server, port = await serve(slow)
        fetcher = UrlFetcher(policy(allow=LOOPBACK, max_concurrent=2), connector=LoopbackOnly())
        try:
            return await asyncio.gather(*(fetcher.fetch(f"http://127.0.0.1:{port}/{i}") for i in range(6)))
        finally:
            server.close()

    assert asyncio.run(main()) == [b"ok"] * 6
    assert state["most"] == 2


def test_fetch_all_fails_the_request_or_with_skip_puts_a_failure_in_place() -> None:
    fetcher = UrlFetcher(policy(), resolver=RESOLVER, connector=NoConnection())
    items: list[bytes | ImageFailure | ImageUrl] = [b"file", ImageUrl("http://10.0.0.1/a.png")]
    out = asyncio.run(fetcher.fetch_all(items, skip=True))
    assert out[0] == b"file"
    assert isinstance(out[1], ImageFailure) and out[1].code == "url_refused"
    assert out[1].message.startswith("image 1: ")
    with pytest.raises(UrlError) as e:
        asyncio.run(fetcher.fetch_all(items, skip=False))
    assert e.value.code == "url_refused" and e.value.message.startswith("image 1: ")
    assert asyncio.run(fetcher.fetch_all([b"a", b"b"], skip=False)) == [b"a", b"b"]
