"""The address policy: every spelling of an internal address is refused, named, and never
resolved through DNS when it is a literal; allowed URLs are pinned to the checked address."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import httpx
import pytest

from rcbatch.errors import ItemFailed, TransportError
from rcbatch.runcomfy.addresses import (
    AddressPolicy,
    Destination,
    StaticResolver,
    address_problem,
    is_loopback_host,
    is_loopback_url,
    parse_address,
)

PUBLIC = "93.184.215.14"
NAMES = {"good.test": [PUBLIC], "cdn.good.test": [PUBLIC, "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
         "evil.test": ["10.0.0.5"], "mixed.test": [PUBLIC, "192.168.1.7"],
         "meta.test": ["169.254.169.254"], "v6.test": ["::1"], "mapped.test": ["::ffff:10.1.2.3"]}


def check(url: str, **options: Any) -> Destination:
    resolver = options.pop("resolver", None) or StaticResolver(NAMES)
    return asyncio.run(AddressPolicy(resolver=resolver, **options).check(url))


def refusal(url: str, **options: Any) -> str:
    with pytest.raises(ItemFailed) as caught:
        check(url, **options)
    return caught.value.message


@pytest.mark.parametrize(("url", "why"), [
    ("https://127.0.0.1/a.jpg", "is 127.0.0.1, a loopback address"),
    ("https://127.1/a.jpg", "is 127.0.0.1, a loopback address"),
    ("https://2130706433/a.jpg", "is 127.0.0.1, a loopback address"),
    ("https://0x7f.0.0.1/a.jpg", "is 127.0.0.1, a loopback address"),
    ("https://0x7f000001/a.jpg", "is 127.0.0.1, a loopback address"),
    ("https://017700000001/a.jpg", "is 127.0.0.1, a loopback address"),
    ("https://127.0.0.1./a.jpg", "is 127.0.0.1, a loopback address"),
    ("https://good.test@127.0.0.1/a.jpg", "is 127.0.0.1, a loopback address"),
    ("https://user:pw@127.0.0.1:8443/a.jpg", "is 127.0.0.1, a loopback address"),
    ("https://localhost/a.jpg", "is localhost"),
    ("https://localhost./a.jpg", "is localhost"),
    ("https://LOCALHOST:8443/a.jpg", "is localhost"),
    ("https://img.localhost/a.jpg", "is localhost"),
    ("https://[::1]/a.jpg", "is ::1, a loopback address"),
    ("https://[0:0:0:0:0:0:0:1]/a.jpg", "is ::1, a loopback address"),
    ("https://[::ffff:127.0.0.1]/a.jpg", "a loopback address (IPv4 127.0.0.1)"),
    ("https://[::ffff:7f00:1]/a.jpg", "a loopback address (IPv4 127.0.0.1)"),
    ("https://[::127.0.0.1]/a.jpg", "a loopback address (IPv4 127.0.0.1)"),
    ("https://[2002:7f00:1::]/a.jpg", "a loopback address (IPv4 127.0.0.1)"),
    ("https://[64:ff9b::a9fe:a9fe]/a.jpg", "a link-local address (IPv4 169.254.169.254)"),
    ("https://[2001:0:4136:e378:8000:63bf:80ff:fffe]/a.jpg", "(IPv4 127.0.0.1)"),
    ("https://10.0.0.5/a.jpg", "is 10.0.0.5, a private address"),
    ("https://172.16.3.4/a.jpg", "is 172.16.3.4, a private address"),
    ("https://192.168.1.1/a.jpg", "is 192.168.1.1, a private address"),
    ("https://[fd12::1]/a.jpg", "is fd12::1, a private address"),
    ("https://169.254.169.254/latest/meta-data/", "is 169.254.169.254, a link-local address"),
    ("https://[fe80::1]/a.jpg", "is fe80::1, a link-local address"),
    ("https://224.0.0.251/a.jpg", "is 224.0.0.251, a multicast address"),
    ("https://[ff02::1]/a.jpg", "is ff02::1, a multicast address"),
    ("https://240.0.0.1/a.jpg", "is 240.0.0.1, a reserved address"),
    ("https://0.0.0.0/a.jpg", "is 0.0.0.0, an unspecified address"),
    ("https://0/a.jpg", "is 0.0.0.0, an unspecified address"),
    ("https://[::]/a.jpg", "is ::, an unspecified address"),
    ("https://100.64.0.1/a.jpg", "is 100.64.0.1, a non-public address"),
    ("https://evil.test/a.jpg", "resolves to 10.0.0.5, a private address"),
    ("https://EVIL.test./a.jpg", "resolves to 10.0.0.5, a private address"),
    ("https://mixed.test/a.jpg", "resolves to 192.168.1.7, a private address"),
    ("https://meta.test/a.jpg", "resolves to 169.254.169.254, a link-local address"),
    ("https://v6.test/a.jpg", "resolves to ::1, a loopback address"),
    ("https://mapped.test/a.jpg", "a private address (IPv4 10.1.2.3)"),
])
def test_internal_addresses_are_refused_with_the_reason(url: str, why: str) -> None:
    message = refusal(url)
    assert why in message and message.endswith("; RunComfy cannot fetch it")


def test_the_message_names_url_address_and_kind() -> None:
    assert refusal("https://evil.test/img.jpg?X-Amz-Signature=s3cr3t") == (
        "https://evil.test/img.jpg: resolves to 10.0.0.5, a private address; "
        "RunComfy cannot fetch it")


def test_userinfo_is_neither_the_host_nor_repeated() -> None:
    message = refusal("https://good.test:pw@127.0.0.1/a.jpg")
    assert message.startswith("https://127.0.0.1/a.jpg: is 127.0.0.1,") and "pw" not in message


def test_literal_addresses_are_judged_without_dns() -> None:
    resolver = StaticResolver(default=[PUBLIC])  # would call every name public
    for url in ("https://2130706433/", "https://[::ffff:127.0.0.1]/", "https://localhost/",
                "https://0x7f.1/"):
        refusal(url, resolver=resolver)
    assert resolver.asked == []


def test_a_public_name_is_pinned_to_its_checked_addresses() -> None:
    destination = check("https://cdn.good.test:8443/a.jpg?sig=1")
    assert [str(a) for a in destination.addresses] == [PUBLIC,
                                                      "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]
    request = destination.build_request(httpx.AsyncClient(), "GET", headers={"Range": "bytes=0-9"})
    assert request.url == httpx.URL(f"https://{PUBLIC}:8443/a.jpg?sig=1")
    assert request.headers["Host"] == "cdn.good.test:8443"
    assert request.headers["Range"] == "bytes=0-9"
    assert request.extensions["sni_hostname"] == "cdn.good.test"
    ipv6 = destination.build_request(httpx.AsyncClient(), "HEAD",
                                     address=destination.addresses[1])
    assert ipv6.url.host == "2606:2800:21f:cb07:6820:80da:af6b:8b2c"


def test_only_checked_addresses_can_be_connected_to() -> None:
    destination = check("https://good.test/a.jpg")
    with pytest.raises(ValueError, match="was not checked"):
        destination.build_request(httpx.AsyncClient(), "GET",
                                  address=ipaddress.ip_address("127.0.0.1"))


def test_a_literal_public_address_has_no_tls_server_name() -> None:
    destination = check("https://8.8.8.8/a.jpg")
    request = destination.build_request(httpx.AsyncClient(), "GET")
    assert "sni_hostname" not in request.extensions and request.headers["Host"] == "8.8.8.8"


def test_ipv4_mapped_public_address_is_allowed() -> None:
    assert str(check("https://[::ffff:8.8.8.8]/a.jpg").address) == "::ffff:808:808"


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/a.jpg", "http://localhost:8000/a.jpg",
                                 "https://[::1]/a.jpg", "http://127.1:8000/a.jpg",
                                 "https://v6.test/a.jpg"])
def test_loopback_is_allowed_only_when_the_flag_says_so(url: str) -> None:
    resolver = StaticResolver({**NAMES, "localhost": ["127.0.0.1"]})
    assert check(url, allow_loopback=True, resolver=resolver).address.is_loopback
    refusal(url, resolver=resolver)


@pytest.mark.parametrize("url", ["https://10.0.0.5/a.jpg", "https://169.254.169.254/",
                                 "https://evil.test/", "https://[::ffff:192.168.0.1]/"])
def test_the_loopback_flag_allows_nothing_else(url: str) -> None:
    refusal(url, allow_loopback=True)


def test_plain_http_is_refused_off_loopback() -> None:
    with pytest.raises(ItemFailed) as caught:
        check("http://good.test/a.jpg", allow_loopback=True)
    assert caught.value.kind == "insecure_url" and "plain http://" in caught.value.message


@pytest.mark.parametrize("url", ["ftp://good.test/a.jpg", "file:///etc/passwd", "https:///a",
                                 "https://0177.0.0.1/a.jpg"])  # httpx refuses this spelling
def test_other_schemes_and_unusable_urls_are_refused(url: str) -> None:
    with pytest.raises(ItemFailed):
        check(url)


def test_trusted_endpoint_is_judged_public_only_on_its_port() -> None:
    trusted = [("127.0.0.1", 8443)]
    assert str(check("https://127.0.0.1:8443/a.jpg", trusted=trusted).address) == "127.0.0.1"
    refusal("https://127.0.0.1:9443/a.jpg", trusted=trusted)
    with pytest.raises(ItemFailed, match="plain http"):
        check("http://127.0.0.1:8443/a.jpg", trusted=trusted)


def test_an_unresolvable_name_is_a_transport_error() -> None:
    with pytest.raises(TransportError, match=r"could not resolve nowhere\.test"):
        check("https://nowhere.test/a.jpg")


@pytest.mark.parametrize(("host", "expected"), [
    ("127.1", "127.0.0.1"), ("2130706433", "127.0.0.1"), ("0x7f.0.0.1", "127.0.0.1"),
    ("017700000001", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("10.1", "10.0.0.1"),
    ("192.168.257", "192.168.1.1"), ("127.0.0.1.", "127.0.0.1"), ("[::1]", "::1"),
    ("fe80::1%25eth0", "fe80::1%eth0"), ("good.test", None), ("1.2.3.4.5", None),
    ("256.0.0.1", None), ("4294967296", None), ("08.0.0.1", None), ("1e2.0.0.1", None)])
def test_parse_address_reads_every_numeric_spelling(host: str, expected: str | None) -> None:
    parsed = parse_address(host)
    assert (None if parsed is None else str(parsed)) == expected


def test_address_problem_is_none_for_public_addresses() -> None:
    for text in (PUBLIC, "8.8.8.8", "2606:4700::1111", "::ffff:1.1.1.1"):
        assert address_problem(ipaddress.ip_address(text)) is None


@pytest.mark.parametrize(("host", "loopback"), [
    ("localhost", True), ("LOCALHOST.", True), ("127.0.0.1", True), ("127.9.9.9", True),
    ("2130706433", True), ("::1", True), ("[::1]", True), ("::ffff:127.0.0.1", True),
    ("api.localhost", True), ("10.0.0.1", False), ("localhost.example.com", False),
    ("api.runcomfy.net", False)])
def test_is_loopback_host_without_dns(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_is_loopback_url() -> None:
    assert is_loopback_url("http://127.1:8000/prod/v1")
    assert is_loopback_url("http://[::1]:8000")
    assert not is_loopback_url("https://model-api.runcomfy.net")
    assert not is_loopback_url("http://good.test@evil.test/")
    assert not is_loopback_url("not a url at all")
