"""Preflight: fetch the head of every input image and apply the page's image rules.

Runs before money is spent. Per URL: a HEAD for the size, then a ranged GET of the first bytes
(64 KiB, widening up to `byte_cap` when the JPEG frame header sits behind a large EXIF block),
read with Pillow for width, height and format. Each URL is fetched once per `Preflight`, however
many rows use it. Everything is bounded: an explicit timeout per request, a deadline per URL, a
semaphore for concurrency and a byte cap even when the server ignores `Range`. Warnings (a rule
the page contradicts, an unknown file size) never block; errors do.

Every request goes through `AddressPolicy` (runcomfy/addresses.py): the URL's host must resolve
to a public address (RunComfy's servers fetch input URLs, so nothing else can work), the request
connects to the address that was checked, and redirects are followed here, hop by hop, each hop
checked again. A refused URL is never contacted, and no error repeats what an answer contained.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from rcbatch.errors import ItemFailed, TransportError
from rcbatch.runcomfy.addresses import AddressPolicy, Destination, IPAddress, safe_url
from rcbatch.runcomfy.catalogue import MODELS, FieldSpec, ImageInfo, ImageRule, Issue, url_problem
from rcbatch.runcomfy.imageinfo import identify, read_header

_FIRST_READ = 64 * 1024
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
#: at most this many GETs per URL (partial-Range servers answer in small pieces)
_MAX_READS = 16
#: redirects followed per request (each hop is checked by the address policy)
_MAX_REDIRECTS = 5


@dataclass(frozen=True)
class Probe:
    """What fetching one URL found: an ImageInfo, or an error; plus warnings either way."""

    url: str
    info: ImageInfo | None = None
    error: str | None = None
    warnings: tuple[str, ...] = ()


class _FetchFailed(Exception):
    """The URL answered with something other than image bytes (reason in the message)."""


class _Refused(Exception):
    """The address policy refused the URL or a redirect hop (the whole message is ours)."""


class Preflight:
    """Image checks for rows, bound to one httpx client and one event loop.

    The client is the caller's (its TLS and transport apply; the client's own redirect setting
    does not: redirects are followed here, at most 5, each hop checked). Each request uses
    `timeout` when given, else the client's own. Results (failures included) are cached per
    URL for the life of this object.

    `allow_loopback_http`: loopback hosts (and plain http:// on them) are fetched; say so only
    when the API itself is on loopback (the simulator). `policy` replaces the default
    `AddressPolicy(allow_loopback=allow_loopback_http)` (tests: a fake resolver); its own
    `allow_loopback` then decides.
    """

    def __init__(self, client: httpx.AsyncClient, *, concurrency: int = 8,
                 byte_cap: int = 1 << 20, timeout: httpx.Timeout | None = None,
                 url_deadline: float = 60.0, allow_loopback_http: bool = False,
                 policy: AddressPolicy | None = None) -> None:
        self._client = client
        self._policy = policy or AddressPolicy(allow_loopback=allow_loopback_http)
        self._semaphore = asyncio.Semaphore(concurrency)
        self._byte_cap = max(1, byte_cap)
        # None: the client's own timeout (httpx clients always carry one, 5 s by default)
        self._timeout: httpx.Timeout | Any = timeout or httpx.USE_CLIENT_DEFAULT
        self._deadline = url_deadline
        self._allow_loopback_http = self._policy.allow_loopback
        self._probes: dict[str, asyncio.Future[Probe]] = {}

    async def check_rows(self, rows: Sequence[tuple[str, Mapping[str, Any]]]) -> list[list[Issue]]:
        """The image issues of each `(model_id, row)`, one list per row in the same order."""
        return list(await asyncio.gather(*(self.check_row(m, row) for m, row in rows)))

    async def check_row(self, model_id: str, row: Mapping[str, Any]) -> list[Issue]:
        """The image issues of one row (field names like `image_urls[1]`).

        Rows or URLs that `validate` rejects are skipped here: it reports those already.
        """
        spec = MODELS.get(model_id)
        if spec is None or spec.image_field is None or not isinstance(row, Mapping):
            return []
        field = spec.fields[spec.image_field]
        urls = row.get(field.name)
        if not isinstance(urls, list | tuple):
            return []
        targets = [(i, url) for i, url in enumerate(urls)
                   if url_problem(url, allow_loopback_http=self._allow_loopback_http) is None]
        probes = await asyncio.gather(*(self.probe(url) for _, url in targets))
        issues: list[Issue] = []
        for (index, _url), probe in zip(targets, probes, strict=True):
            issues.extend(judge(field, f"{field.name}[{index}]", probe))
        return issues

    def probe(self, url: str) -> asyncio.Future[Probe]:
        """The (shared) measurement of `url`: fetched on first request, then reused."""
        future = self._probes.get(url)
        if future is None:
            future = asyncio.ensure_future(self._bounded_probe(url))
            self._probes[url] = future
        return future

    async def _bounded_probe(self, url: str) -> Probe:
        async with self._semaphore:
            try:
                async with asyncio.timeout(self._deadline):
                    return await self._measure(url)
            except TimeoutError:
                return Probe(url, error=f"could not fetch image {url}: timed out")
            except _Refused as exc:
                return Probe(url, error=str(exc))
            except _FetchFailed as exc:
                return Probe(url, error=f"could not fetch image {url}: {exc}")
            except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
                return Probe(url, error=f"could not fetch image {url}: {_http_error(exc)}")

    async def _measure(self, url: str) -> Probe:
        head_size = await self._head(url)
        prefix = _Prefix()
        for _ in range(_MAX_READS):
            before = len(prefix.data)
            await self._read_more(url, prefix, self._next_limit(before))
            if identify(bytes(prefix.data)) is None:
                raise _FetchFailed(_not_an_image(prefix))
            prefix.header = read_header(bytes(prefix.data))
            if (prefix.header or prefix.complete or len(prefix.data) >= self._byte_cap
                    or len(prefix.data) == before):
                break
        return self._probe_from(url, prefix, head_size)

    def _next_limit(self, have: int) -> int:
        return min(self._byte_cap, max(_FIRST_READ, 4 * have))

    def _probe_from(self, url: str, prefix: _Prefix, head_size: int | None) -> Probe:
        warnings = _content_type_warnings(prefix.content_type)
        if prefix.header is None and prefix.complete:
            raise _FetchFailed(f"could not read the image's size from its header "
                               f"(a damaged {identify(bytes(prefix.data))} file?)")
        if prefix.header is None:
            return Probe(url, warnings=(*warnings, f"could not read the image size from the "
                                                   f"first {len(prefix.data):,} bytes of {url}; "
                                                   f"its size limits were not checked"))
        width, height, fmt = prefix.header
        size = prefix.total or head_size or (len(prefix.data) if prefix.complete else None)
        info = ImageInfo(width, height, size, fmt, prefix.content_type)
        return Probe(url, info=info, warnings=warnings)

    async def _head(self, url: str) -> int | None:
        async with self._fetch("HEAD", url, {}) as response:
            status = response.status_code
        if status in (404, 410):
            raise _FetchFailed(f"HTTP {status}")
        # presigned GET URLs often refuse HEAD (403/405): the GET decides then
        return _int_header(response.headers.get("content-length")) if response.is_success else None

    @contextlib.asynccontextmanager
    async def _fetch(self, method: str, url: str,
                     headers: dict[str, str]) -> AsyncIterator[httpx.Response]:
        """The streamed answer for `url` after redirects, every hop passing the policy."""
        response = await self._follow(method, url, headers)
        try:
            yield response
        finally:
            await response.aclose()

    async def _follow(self, method: str, url: str, headers: dict[str, str]) -> httpx.Response:
        current = httpx.URL(url)
        for hop in range(_MAX_REDIRECTS + 1):
            destination = await self._destination(url, current, hop)
            response = await self._send(destination, method, headers)
            location = response.headers.get("location")
            if not (response.is_redirect and location):
                return response
            await response.aclose()
            current = current.join(location)
        raise _FetchFailed(f"more than {_MAX_REDIRECTS} redirects")

    async def _destination(self, url: str, current: httpx.URL, hop: int) -> Destination:
        try:
            return await self._policy.check(current)
        except ItemFailed as exc:
            raise _Refused(exc.message if hop == 0
                           else f"{safe_url(url)}: redirected to {exc.message}") from exc
        except TransportError as exc:
            raise _FetchFailed("its host did not resolve" if hop == 0
                               else "a redirect's host did not resolve") from exc

    async def _send(self, destination: Destination, method: str,
                    headers: dict[str, str]) -> httpx.Response:
        """Send to the first checked address that accepts a connection."""
        *others, last = destination.addresses
        for address in others:
            with contextlib.suppress(httpx.ConnectError):
                return await self._send_to(destination, address, method, headers)
        return await self._send_to(destination, last, method, headers)

    async def _send_to(self, destination: Destination, address: IPAddress, method: str,
                       headers: dict[str, str]) -> httpx.Response:
        request = destination.build_request(self._client, method, headers=headers,
                                            timeout=self._timeout, address=address)
        return await self._client.send(request, stream=True, follow_redirects=False)

    async def _read_more(self, url: str, prefix: _Prefix, limit: int) -> None:
        """Extend `prefix.data` towards `limit` bytes with a ranged GET from where it ends.

        Copes with servers that ignore Range (200: the body restarts at byte 0) and with ones
        that honour it partially (206 with fewer bytes than asked: the next read resumes).
        """
        start = len(prefix.data)
        headers = {"Range": f"bytes={start}-{limit - 1}"}
        async with self._fetch("GET", url, headers) as response:
            if response.status_code == 416 and start > 0:
                prefix.complete = True  # nothing past `start`: we have the whole file
                return
            if response.status_code not in (200, 206):
                raise _FetchFailed(f"HTTP {response.status_code}")
            first = _range_start(response)
            if first == 0:
                prefix.data.clear()  # the body starts at byte 0 (Range ignored or restarted)
            elif first != start:
                raise _FetchFailed(f"answered bytes from {first} when asked from {start}")
            ended = await _read_into(response, prefix.data, limit)
            prefix.total = _entity_size(response) or prefix.total
            prefix.content_type = response.headers.get("content-type")
            prefix.complete = (prefix.total is not None and len(prefix.data) >= prefix.total) or (
                ended and response.status_code == 200)


@dataclass
class _Prefix:
    """The first bytes of one image as read so far, and what the responses said about it."""

    data: bytearray = dataclasses.field(default_factory=bytearray)
    total: int | None = None
    content_type: str | None = None
    complete: bool = False
    header: tuple[int, int, str] | None = None


async def _read_into(response: httpx.Response, data: bytearray, limit: int) -> bool:
    """Append the body to `data` until it holds `limit` bytes; True if the body ended first."""
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= limit:
            del data[limit:]
            return False
    return True


def _range_start(response: httpx.Response) -> int:
    if response.status_code != 206:
        return 0
    match = _CONTENT_RANGE.search(response.headers.get("content-range", ""))
    return int(match.group(1)) if match else 0


def _entity_size(response: httpx.Response) -> int | None:
    if response.status_code == 206:
        match = _CONTENT_RANGE.search(response.headers.get("content-range", ""))
        return int(match.group(3)) if match and match.group(3) != "*" else None
    return _int_header(response.headers.get("content-length"))


def _int_header(value: str | None) -> int | None:
    return int(value) if value and value.strip().isdigit() else None


def _not_an_image(prefix: _Prefix) -> str:
    if not prefix.data:
        return "the server sent an empty body"
    return "not an image"


def _content_type_warnings(content_type: str | None) -> tuple[str, ...]:
    if content_type and not content_type.lower().startswith(("image/", "application/octet")):
        return (f"served with Content-Type {content_type}, not image/*; the API may refuse it",)
    return ()


def _http_error(exc: Exception) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return "connection failed"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def judge(field: FieldSpec, label: str, probe: Probe) -> list[Issue]:
    """The issues of one measured image against `field`'s rules, labelled e.g. `images[2]`."""
    if probe.error is not None:
        return [Issue(label, probe.error)]
    issues = [Issue(label, w, "warning") for w in probe.warnings]
    info = probe.info
    if info is None:
        return issues
    if field.image_formats and info.format and info.format not in field.image_formats:
        issues.append(Issue(label, f"the page accepts only {' and '.join(field.image_formats)} "
                                   f"images, this one is {info.format} (stated only in the "
                                   f"description; the API decides)", "warning"))
    seen: set[str] = set()
    for rule in field.image_rules:
        issue = _rule_issue(rule, label, info)
        if issue is not None and issue.message not in seen:
            seen.add(issue.message)
            issues.append(issue)
    return issues


def _rule_issue(rule: ImageRule, label: str, info: ImageInfo) -> Issue | None:
    if not rule.measurable(info):
        return Issue(label, f"{rule.message} (not checked: the server did not say the file's "
                            f"size)", "warning")
    verdict = rule.verdict(info)
    if verdict == "ok":
        return None
    got = _measured(rule, info)
    if verdict == "error":
        return Issue(label, f"{rule.message} (got {got})")
    why = ("the page's rule and its message disagree here" if rule.message_rule is not None
           else "over the limit only if MB means 10^6 bytes, not 2^20")
    return Issue(label, f"{rule.message} (got {got}; {why}, so this does not block: the API "
                        f"decides)", "warning")


def _measured(rule: ImageRule, info: ImageInfo) -> str:
    if rule.subject == "file_size_mb" and info.size_bytes is not None:
        return f"{info.size_bytes:,} bytes = {info.size_bytes / 1e6:.2f} MB"
    if rule.subject == "width/height":
        return f"{info.width}×{info.height} px, width/height {info.aspect:.3f}"
    return f"{info.width}×{info.height} px"
