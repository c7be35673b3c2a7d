"""Which URLs rcbatch may fetch: public addresses only, judged after resolving, then pinned.

RunComfy's servers fetch input URLs themselves, so a URL whose host resolves to a loopback,
private, link-local, multicast, reserved or unspecified address can never work for the API.
Fetching one from here (the image preflight, a redirect, an output download) could only reach
this machine's or this network's own services: cloud metadata at 169.254.169.254, an admin port
on 127.0.0.1 (SSRF). The one exception is loopback when the caller says the API itself is on
loopback (the simulator), and plain http:// only there.

Hosts are read the way the connecting code reads them: httpx's URL parser decides what the host
is (`https://good.com@127.0.0.1/` is 127.0.0.1), every IPv4 spelling inet_aton accepts is an
address, not a name (`127.1`, `2130706433`, `0x7f.0.0.1`, `017700000001`), IPv6 addresses that
carry an IPv4 one (mapped, compatible, 6to4, NAT64, Teredo) are judged by it too, and case and a
trailing dot change nothing. `Destination.build_request` then connects to the very address that
was judged (no second DNS answer) while keeping the URL's Host header and TLS server name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import httpx

from rcbatch.errors import ItemFailed, TransportError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: `(host, port) -> addresses`: how names become addresses (async; raises OSError on failure)
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

_DEFAULT_PORTS = {"http": 80, "https": 443}
#: one part of an inet_aton IPv4 spelling: hex, octal (leading 0) or decimal
_IPV4_PART = re.compile(r"0x[0-9a-f]*|0[0-7]*|[1-9][0-9]*")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_CANNOT = "RunComfy cannot fetch it"
#: most specific first: the first that matches names the address
_KINDS: tuple[tuple[str, Callable[[IPAddress], bool]], ...] = (
    ("an unspecified address", lambda ip: ip.is_unspecified),
    ("a loopback address", lambda ip: ip.is_loopback),
    ("a link-local address", lambda ip: ip.is_link_local),
    ("a multicast address", lambda ip: ip.is_multicast),
    ("a reserved address", lambda ip: ip.is_reserved),
    ("a private address", lambda ip: ip.is_private),
    ("a non-public address", lambda ip: not ip.is_global),
)


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the operating system gives for `host` (getaddrinfo, off the event loop)."""
    answers = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in answers))


class StaticResolver:
    """A resolver answering from a fixed table (tests, fixtures); other names fail like DNS.

    `default` answers every name the table lacks; `asked` records each name looked up.
    """

    def __init__(self, answers: Mapping[str, Sequence[str]] | None = None,
                 default: Sequence[str] | None = None) -> None:
        self.answers = {_plain_name(name): list(found) for name, found in (answers or {}).items()}
        self.default = list(default) if default is not None else None
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        """The table's addresses for `host`; socket.gaierror when it has none."""
        self.asked.append(host)
        found = self.answers.get(_plain_name(host), self.default)
        if found is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(found)


def parse_address(host: str) -> IPAddress | None:
    """`host` as an IP address if it spells one in any form the network stack accepts.

    Takes `[brackets]`, a `%zone` (percent-encoded or not), one trailing dot and inet_aton's
    IPv4 forms (`127.1`, `2130706433`, `0x7f.0.0.1`, `017700000001`); None for a name.
    """
    text = unquote(host.strip())
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.removesuffix(".")
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            return None
    return _inet_aton(text)


def _inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """IPv4 the way inet_aton reads it: 1-4 parts, the last filling the remaining bytes."""
    parts = text.lower().split(".")
    if not 1 <= len(parts) <= 4 or not all(_IPV4_PART.fullmatch(p) for p in parts):
        return None
    values = [int(p[2:] or "0", 16) if p.startswith("0x") else int(p, 8) if p.startswith("0")
              else int(p) for p in parts]
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    value = last
    for index, part in enumerate(head):
        value += part << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, compatible, translated, NAT64, 6to4,
    Teredo client), or None."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    value = int(address)
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if value >> 32 == 0xFFFF0000 or address in _NAT64 or (value >> 32 == 0 and value > 1):
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    return address.teredo[1] if address.teredo is not None else None


def address_problem(address: IPAddress) -> str | None:
    """Why nothing outside this network can reach `address` ("a private address"), or None.

    An IPv6 address carrying an IPv4 one is judged by both; a mapped one (`::ffff:a.b.c.d`,
    which the stack sends as IPv4) by the IPv4 address alone.
    """
    inner = embedded_ipv4(address)
    if inner is not None:
        problem = _kind(inner)
        if problem is not None:
            return f"{problem} (IPv4 {inner})"
        if int(address) >> 32 in (0xFFFF, 0xFFFF0000):  # mapped or translated: sent as IPv4
            return None
    return _kind(address)


def _kind(address: IPAddress) -> str | None:
    return next((name for name, test in _KINDS if test(address)), None)


def is_loopback_address(address: IPAddress) -> bool:
    """True for 127.0.0.0/8 and ::1, also inside an IPv6 address carrying IPv4."""
    inner = embedded_ipv4(address)
    return address.is_loopback or (inner is not None and inner.is_loopback)


def is_localhost_name(host: str) -> bool:
    """True for `localhost` and `*.localhost` (RFC 6761), in any case, with a trailing dot."""
    name = _plain_name(host)
    return name == "localhost" or name.endswith(".localhost")


def is_loopback_host(host: str) -> bool:
    """True when `host` (a URL's host, no DNS asked) is this machine in any spelling."""
    address = parse_address(host)
    return is_localhost_name(host) or (address is not None and is_loopback_address(address))


def is_loopback_url(url: str | httpx.URL) -> bool:
    """True when the URL's host is this machine in any spelling (no DNS asked)."""
    try:
        return is_loopback_host(httpx.URL(url).raw_host.decode("ascii"))
    except (httpx.InvalidURL, TypeError, UnicodeDecodeError):
        return False


def safe_url(url: str | httpx.URL) -> str:
    """The URL for messages: no userinfo, query or fragment (pre-signed URLs carry
    credentials there), at most 200 characters."""
    try:
        parsed = httpx.URL(url)
        text = f"{parsed.scheme}://{parsed.netloc.decode('ascii')}{parsed.path}"
    except (httpx.InvalidURL, TypeError, UnicodeDecodeError):
        text = str(url).split("?", 1)[0].split("#", 1)[0]
    return text[:200]


@dataclass(frozen=True)
class Destination:
    """A URL that passed the policy, and the addresses (all checked) it may be fetched from,
    in the resolver's order of preference."""

    url: httpx.URL
    addresses: tuple[IPAddress, ...]

    @property
    def address(self) -> IPAddress:
        """The preferred address."""
        return self.addresses[0]

    def build_request(self, client: httpx.AsyncClient, method: str, *,
                      headers: Mapping[str, str] | None = None, timeout: Any = None,
                      address: IPAddress | None = None) -> httpx.Request:
        """A request to `url` that connects to `address` (one of `addresses`, default the
        first): the URL's host goes in the Host header and, for https, in the TLS server name,
        so the certificate is still checked for that name.

        `timeout` None: the client's own. Send it with `follow_redirects=False`: every hop
        must come back through `AddressPolicy.check`.
        """
        address = self.address if address is None else address
        if address not in self.addresses:
            raise ValueError(f"{address} was not checked for {safe_url(self.url)}")
        host = self.url.raw_host.decode("ascii")
        pinned = self.url.copy_with(host=str(address))
        extensions: dict[str, Any] = {}
        if self.url.scheme == "https" and parse_address(host) is None:
            extensions["sni_hostname"] = host
        merged = {**(headers or {}), "Host": self.url.netloc.decode("ascii")}
        return client.build_request(method, pinned, headers=merged, extensions=extensions,
                                    timeout=httpx.USE_CLIENT_DEFAULT if timeout is None
                                    else timeout)


class AddressPolicy:
    """Decides whether a URL may be fetched and where exactly to connect for it.

    `allow_loopback`: loopback addresses (and plain http:// to them) are allowed; say so only
    when the API itself is on loopback (the simulator), which alone could fetch them.
    `resolver`: how names are resolved (default getaddrinfo). `trusted`: `(address, port)`
    endpoints judged public whatever their address (tests: a loopback server playing a public
    host); plain http:// stays refused on them.
    """

    def __init__(self, *, allow_loopback: bool = False, resolver: Resolver | None = None,
                 trusted: Collection[tuple[str, int]] = ()) -> None:
        self.allow_loopback = allow_loopback
        self._resolve = resolver or system_resolver
        self._trusted = {(ipaddress.ip_address(a), port) for a, port in trusted}

    def __repr__(self) -> str:
        return f"AddressPolicy(allow_loopback={self.allow_loopback})"

    async def check(self, url: str | httpx.URL) -> Destination:
        """The destination for `url`, or ItemFailed naming why it is refused (kind
        `refused_address` or `insecure_url`); TransportError when the host does not resolve."""
        parsed = _parsed(url)
        host = parsed.raw_host.decode("ascii")
        if is_localhost_name(host) and not self.allow_loopback:
            raise _refused(parsed, "is localhost, this machine (a loopback address)")
        port = parsed.port or _DEFAULT_PORTS[parsed.scheme]
        literal = parse_address(host)
        addresses = [literal] if literal is not None else await self._addresses(parsed, port)
        verb = "is" if literal is not None else "resolves to"
        for address in addresses:
            problem = self._problem(address, port)
            if problem is not None:
                raise _refused(parsed, f"{verb} {address}, {problem}")
        if parsed.scheme == "http" and not (
                self.allow_loopback and all(map(is_loopback_address, addresses))):
            raise ItemFailed(f"{safe_url(parsed)}: plain http:// is fetched only from loopback, "
                             f"when the API itself is on loopback (the simulator)",
                             kind="insecure_url")
        return Destination(parsed, tuple(addresses))

    async def _addresses(self, url: httpx.URL, port: int) -> list[IPAddress]:
        host = url.raw_host.decode("ascii")
        try:
            found = [parse_address(a) for a in await self._resolve(host, port)]
        except OSError as exc:
            raise TransportError(f"{safe_url(url)}: could not resolve {host}",
                                 kind="dns") from exc
        addresses = [a for a in found if a is not None]
        if not addresses or len(addresses) != len(found):
            raise TransportError(f"{safe_url(url)}: {host} resolved to no usable address",
                                 kind="dns")
        return addresses

    def _problem(self, address: IPAddress, port: int) -> str | None:
        if (address, port) in self._trusted:
            return None
        if self.allow_loopback and is_loopback_address(address):
            return None
        return address_problem(address)


def _parsed(url: str | httpx.URL) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
        parsed.raw_host.decode("ascii")
    except (httpx.InvalidURL, TypeError, UnicodeDecodeError) as exc:
        raise ItemFailed(f"not a usable URL: {safe_url(str(url))}", kind="invalid_url") from exc
    if parsed.scheme not in _DEFAULT_PORTS or not parsed.raw_host:
        raise ItemFailed(f"{safe_url(parsed)}: only https:// URLs with a host are fetched",
                         kind="insecure_url")
    return parsed


def _refused(url: httpx.URL, why: str) -> ItemFailed:
    return ItemFailed(f"{safe_url(url)}: {why}; {_CANNOT}", kind="refused_address")


def _plain_name(host: str) -> str:
    return host.strip().lower().removesuffix(".")
