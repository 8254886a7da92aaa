"""Image URLs, fetched so that a URL can never make the server reach what it should not.

The failure to avoid is server-side request forgery (TorchServe's CVE-2023-43654): a URL that makes
the server call its own loopback, the cluster's private network or a cloud metadata endpoint. So:
- http and https only, no credentials in the URL;
- the host is resolved once, and every address it resolves to must be public (ipaddress' is_global,
  not multicast, not a metadata address) or inside the operator's allow-list; an IPv6 address that
  carries an IPv4 one (v4-mapped ::ffff:a.b.c.d, v4-compatible, 6to4) is judged as that IPv4 address;
- the connection goes to the checked address itself (the Host header and the TLS name stay the
  URL's host), so a second DNS answer (rebinding) never comes into play;
- each redirect (at most max_redirects) goes through the same checks from the start;
- the body is streamed and abandoned past max_bytes; one deadline covers the whole fetch, redirects
  and the wait for a slot included; at most max_concurrent fetches run at once in the process.
The resolver and the connector are parameters, so tests prove that a refusal comes before any
connection is opened (tests/app/test_url_fetch.py). HTTP/1.1 is spoken through h11 (uvicorn's own
parser): bounded header sizes, chunked and close-delimited bodies, no hand-written parsing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import h11

from app.runtime.errors import ImageFailure, UrlError
from app.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Resolver = Callable[[str, int], Awaitable[list[str]]]
# (address, port, TLS context or None, the name the certificate must carry) -> streams
Connector = Callable[[str, int, ssl.SSLContext | None, str | None], Awaitable[Streams]]

REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Cloud metadata services (AWS, ECS, GCP, Azure, Alibaba, AWS IPv6); most are link-local or private
# anyway, and they are named so that the refusal says what the address is.
METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")
)
MAX_URL_CHARS = 8192
MAX_HEADER_BYTES = 32 * 1024
CHUNK = 64 * 1024
_V4_COMPAT = ipaddress.ip_network("::/96")


@dataclass(frozen=True)
class ImageUrl:
    """An image given by URL in a request; the engine fetches it (or refuses to)."""

    url: str


@dataclass(frozen=True)
class FetchPolicy:
    enabled: bool = False
    allow: tuple[Network, ...] = ()  # networks fetched from even though they are not public
    max_bytes: int = 20 * 1024 * 1024
    timeout_s: float = 10.0
    max_redirects: int = 3
    max_concurrent: int = 16


def policy_from(s: Settings) -> FetchPolicy:
    """The settings' policy; the byte cap is the upload cap: a fetched image is held to an upload's."""
    allow = tuple(ipaddress.ip_network(n) for n in s.url_allow)
    return FetchPolicy(
        s.url_fetch, allow, s.max_upload_bytes, s.url_fetch_timeout_s, s.url_max_redirects,
        s.url_fetch_max_concurrent,
    )  # fmt: skip


def carried_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, where it stands for one."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _V4_COMPAT and int(ip) > 1:  # ::a.b.c.d (deprecated, still routed by some stacks)
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal(ip: IPAddress, allow: tuple[Network, ...] = ()) -> str | None:
    """None when the address may be fetched from; otherwise what kind of address it is."""
    ip = carried_v4(ip) or ip
    if any(ip.version == net.version and ip in net for net in allow):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.teredo is not None:
        return "a Teredo tunnel address"
    checks = (
        (ip in METADATA, "a cloud metadata address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_unspecified, "the unspecified address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        (not ip.is_global, "not a public address"),
    )
    return next((why for hit, why in checks if hit), None)


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def open_tcp(address: str, port: int, tls: ssl.SSLContext | None, name: str | None) -> Streams:
    return await asyncio.open_connection(address, port, ssl=tls, server_hostname=name if tls else None)


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # without brackets
    port: int
    netloc: str  # for the Host header
    path: str  # path and query


def parse_url(url: str) -> _Target:
    """The parts of an http(s) URL; UrlError (invalid_url, url_refused) for anything else."""
    if len(url) > MAX_URL_CHARS:
        raise UrlError(f"the URL is longer than {MAX_URL_CHARS} characters", code="invalid_url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise UrlError(f"the URL cannot be parsed: {e}", code="invalid_url") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        shown = f"{scheme}:" if scheme else "no scheme"
        raise UrlError(f"only http and https URLs are fetched, not {shown}", code="url_refused")
    if parts.username is not None or parts.password is not None:
        raise UrlError("URLs with credentials (user@host) are not fetched", code="url_refused")
    if not parts.hostname:
        raise UrlError("the URL has no host", code="invalid_url")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    netloc = parts.netloc
    return _Target(scheme, parts.hostname, port or (443 if scheme == "https" else 80), netloc, path)


class UrlFetcher:
    def __init__(
        self,
        policy: FetchPolicy,
        resolver: Resolver = system_resolver,
        connector: Connector = open_tcp,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.policy, self.resolve, self.connect = policy, resolver, connector
        self._tls = tls
        self._slots = asyncio.Semaphore(policy.max_concurrent)
        self.fetched = self.refused = 0  # for /metrics and tests

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:  # made on first use: loading the CA store costs a few milliseconds
            self._tls = ssl.create_default_context()
        return self._tls

    def check_enabled(self) -> None:
        if not self.policy.enabled:
            raise UrlError(
                "this server does not fetch image URLs (ZEROSHOT_URL_FETCH is off): send the image "
                "itself, as a file or base64",
                code="url_fetch_disabled",
            )

    async def fetch(self, url: str) -> bytes:
        """The body of an http(s) URL, fetched under the policy; UrlError naming the cause."""
        self.check_enabled()
        p, stage = self.policy, "waiting for a free fetch slot"
        try:
            async with asyncio.timeout(p.timeout_s):
                async with self._slots:
                    stage = "fetching"
                    body = await self._follow(url)
        except TimeoutError:
            raise UrlError(
                f"the image URL took longer than {p.timeout_s:g} s ({stage})", code="url_timeout"
            ) from None
        self.fetched += 1
        return body

    async def fetch_all(
        self, items: Sequence[bytes | ImageFailure | ImageUrl], skip: bool
    ) -> list[bytes | ImageFailure]:
        """The request's images with every URL replaced by its body, fetched side by side. A URL
        that fails fails the request (and stops the other fetches), or with skip becomes a failure
        in its place."""
        urls = {i: x.url for i, x in enumerate(items) if isinstance(x, ImageUrl)}
        if not urls:
            return [x for x in items if not isinstance(x, ImageUrl)]
        self.check_enabled()  # a server setting, not one image's fault: the request fails with it

        async def one(i: int) -> bytes | ImageFailure:
            try:
                return await self.fetch(urls[i])
            except UrlError as e:
                if not skip:
                    raise UrlError(f"image {i}: {e.message}", e.detail, code=e.code) from None
                return ImageFailure(e.code, f"image {i}: {e.message}")

        try:
            async with asyncio.TaskGroup() as tg:  # the first failure cancels the others
                tasks = {i: tg.create_task(one(i)) for i in urls}
        except BaseExceptionGroup as group:
            first = next((e for e in group.exceptions if isinstance(e, UrlError)), None)
            if first is None:
                raise
            raise first from None
        return [tasks[i].result() if isinstance(x, ImageUrl) else x for i, x in enumerate(items)]

    async def _follow(self, url: str) -> bytes:
        for _ in range(self.policy.max_redirects + 1):
            target = parse_url(url)
            addresses = await self._addresses(target)
            location, body = await self._get(target, addresses)
            if location is None:
                return body
            url = urljoin(url, location)
        raise UrlError(f"more than {self.policy.max_redirects} redirects", code="url_unreachable")

    async def _addresses(self, t: _Target) -> list[str]:
        """The host's addresses, every one of them checked; refused before any connection."""
        try:
            literal: IPAddress | None = ipaddress.ip_address(t.host)
        except ValueError:
            literal = None
        if literal is not None:
            found = [str(literal)]
        else:
            try:
                found = await self.resolve(t.host, t.port)
            except (OSError, UnicodeError) as e:
                raise UrlError(f"the host {t.host!r} does not resolve: {e}", code="url_unreachable") from None
            if not found:
                raise UrlError(f"the host {t.host!r} does not resolve", code="url_unreachable")
        for a in found:
            try:
                why = refusal(ipaddress.ip_address(a.split("%")[0]), self.policy.allow)
            except ValueError:
                why = "not an IP address"
            if why is not None:
                self.refused += 1
                via = "" if literal is not None else f"{t.host!r} resolves to "
                raise UrlError(f"{via}{a} is {why}: not fetched", {"address": a}, code="url_refused")
        return found

    async def _open(self, t: _Target, addresses: list[str]) -> Streams:
        tls = self._tls_context() if t.scheme == "https" else None
        last: OSError | None = None
        for a in addresses:  # each one checked already: connect to it, never to the name
            try:
                return await self.connect(a, t.port, tls, t.host)
            except OSError as e:
                last = e
        raise UrlError(f"could not connect to {t.host}: {last}", code="url_unreachable")

    async def _get(self, t: _Target, addresses: list[str]) -> tuple[str | None, bytes]:
        """(the redirect's Location, b"") or (None, the body of a 2xx answer)."""
        reader, writer = await self._open(t, addresses)
        try:
            conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
            headers = [
                ("Host", t.netloc),
                ("User-Agent", "zeroshot-url-fetch"),
                ("Accept", "image/*"),
                ("Connection", "close"),
            ]
            try:
                writer.write(conn.send(h11.Request(method="GET", target=t.path, headers=headers)))
                writer.write(conn.send(h11.EndOfMessage()) or b"")
            except h11.LocalProtocolError as e:
                raise UrlError(f"the URL cannot be requested: {e}", code="invalid_url") from None
            await writer.drain()
            return await self._response(conn, reader, t)
        except h11.RemoteProtocolError as e:
            raise UrlError(f"{t.host} sent a malformed HTTP response: {e}", code="url_unreachable") from None
        except OSError as e:
            raise UrlError(f"the connection to {t.host} failed: {e}", code="url_unreachable") from None
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _response(
        self, conn: h11.Connection, reader: asyncio.StreamReader, t: _Target
    ) -> tuple[str | None, bytes]:
        event = await _next(conn, reader)
        while isinstance(event, h11.InformationalResponse):  # 100 Continue and kin
            event = await _next(conn, reader)
        if not isinstance(event, h11.Response):
            raise UrlError(f"{t.host} closed the connection without answering", code="url_unreachable")
        head = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
        if event.status_code in REDIRECTS:
            if "location" not in head:
                raise UrlError(f"{t.host} redirected without a Location", code="url_unreachable")
            return head["location"], b""
        if not 200 <= event.status_code < 300:  # its body is never read
            raise UrlError(f"{t.host} answered HTTP {event.status_code}", code="url_unreachable")
        cap = self.policy.max_bytes
        length = head.get("content-length", "")
        if length.isdigit() and int(length) > cap:
            raise UrlError(f"the image at {t.host} is {length} bytes; at most {cap}", code="url_too_large")
        body = bytearray()
        while True:
            event = await _next(conn, reader)
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > cap:  # abandoned mid-stream: an endless body costs at most cap bytes
                    raise UrlError(f"the image at {t.host} is larger than {cap} bytes", code="url_too_large")
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return None, bytes(body)
            else:
                raise UrlError(f"{t.host} sent an unexpected {type(event).__name__}", code="url_unreachable")


async def _next(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await reader.read(CHUNK))  # b"" at the end of the stream
