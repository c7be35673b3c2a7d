"""The contact sheet: every item of a batch on the page, each sweep as a grid of its real
outputs (checked in Chromium), the rest in a section of their own, in time linear in the items."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from PIL import Image

from rcbatch.producer.spec import read_and_check
from rcbatch.worker import contact_sheet, keys
from rcbatch.worker.bucket import LocalBucket
from rcbatch.worker.manifest import write_contact_sheet
from rcbatch.worker.state import NewItem, Store

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCALES = [0.3, 0.5, 0.7]
PROMPTS = ["a red fox", "a blue whale", "a green frog"]
COLOURS = [(230, 30, 30), (30, 200, 30), (30, 30, 230), (230, 230, 30), (30, 230, 230),
           (230, 30, 230), (120, 60, 10), (250, 140, 0), (90, 0, 160),
           # a second sweep (two items), then two items outside any sweep
           (0, 128, 128), (128, 0, 64), (64, 128, 0), (200, 100, 150)]
T2I = "bytedance/dreamina-4-0/text-to-image"


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, "PNG")
    return buffer.getvalue()


def swept(item_id: str, line: int, axes: dict[str, Any], **fields: Any) -> NewItem:
    sweep = json.dumps({"axes": axes})
    return NewItem(item_id, "s.jsonl", line, T2I, {**fields, **axes}, {"sweep": sweep})


def sweep_items() -> list[NewItem]:
    """A 3x3 sweep of scale by prompt, from line 1."""
    return [swept(f"i{n}", 1, {"scale": s, "prompt": p})
            for n, (s, p) in enumerate((s, p) for s in SCALES for p in PROMPTS)]


def side_items() -> list[NewItem]:
    """What follows the 3x3 sweep: a sweep on another field (line 2), two plain rows."""
    return [swept("seed-1", 2, {"seed": 1}, prompt="a cat"),
            swept("seed-2", 2, {"seed": 2}, prompt="a cat"),
            NewItem("plain-a", "s.jsonl", 3, T2I, {"prompt": "a lone tree"}),
            NewItem("plain-b", "s.jsonl", 4, T2I, {"prompt": "a lone rock"})]


def stored_batch(tmp_path: Path, items: list[NewItem], *,
                 failed: int | None = None) -> tuple[Store, LocalBucket]:
    """The items registered and completed with one PNG each (COLOURS[n]); item `failed`
    failed instead."""
    store = Store(fakeredis.FakeRedis())
    bucket = LocalBucket(tmp_path)
    store.register("b", {"name": "sweep"}, items)
    for n, item in enumerate(items):
        if n == failed:
            store.transition("b", item.item_id, expect=(keys.PENDING,), to=keys.FAILED,
                             values={"error": {"kind": "job_failed", "message": "refused"}})
            continue
        data = png(COLOURS[n])
        obj = bucket.put_bytes(f"b/{item.item_id}/0.png", data, content_type="image/png")
        out = [{"index": 0, "key": obj.key, "bytes": len(data), "content_type": "image/png",
                "sha256": hashlib.sha256(data).hexdigest(), "source_url": "x"}]
        store.transition("b", item.item_id, expect=(keys.PENDING,), to=keys.COMPLETED,
                         values={"outputs": out})
    return store, bucket


def test_the_page_has_a_row_per_first_axis_and_a_column_per_second(tmp_path: Path) -> None:
    store, bucket = stored_batch(tmp_path, sweep_items(), failed=4)
    write_contact_sheet(store, bucket, "b")
    page = (tmp_path / "b" / "index.html").read_text()
    assert page.count("<tr>") == 4  # the header row and one per scale
    assert page.count("<img ") == 8 and "refused" in page
    assert "i0/0.png" in page and str(tmp_path) not in page  # relative links only


def test_further_axes_become_sections() -> None:
    lines = [{"item_id": f"i{n}", "status": "completed", "input": {"prompt": "p"},
              "outputs": [], "sweep": {"axes": {"a": a, "b": b, "c": c}}}
             for n, (a, b, c) in enumerate((a, b, c) for a in (1, 2) for b in (1, 2)
                                           for c in ("x", "y"))]
    page = contact_sheet.render("b", lines)
    assert page.count("<h2>") == 2 and "c = x" in page and "c = y" in page


def line(item_id: str, row: int, *, sweep: dict[str, Any] | None = None,
         status: str = "completed", outputs: Sequence[str] = (), **fields: Any) -> dict[str, Any]:
    """A manifest line as manifest.manifest_line writes it."""
    types = {"png": "image/png", "mp4": "video/mp4"}
    return {"item_id": item_id, "line": f"/home/me/in.jsonl:{row}", "model": T2I,
            "input": fields, "status": status, "sweep": sweep,
            "outputs": [{"key": f"b/{item_id}/{name}",
                         "content_type": types[name.rsplit(".", 1)[-1]]} for name in outputs],
            "error": {"kind": "job_failed", "message": "nsfw refused"}
            if status == "failed" else None}


def test_items_outside_the_sweeps_get_a_section_of_their_own() -> None:
    grid = [line(f"g{n}", 1, sweep={"axes": {"scale": s, "prompt": p}}, outputs=["0.png"],
                 prompt=p, scale=s) for n, (s, p) in enumerate((s, p) for s in (0.3, 0.7)
                                                              for p in ("x", "y", "z"))]
    plain = [line("tree", 2, outputs=["0.png", "1.png"], prompt="a lone tree", seed=5),
             line("clip", 3, outputs=["0.mp4"], prompt="waves"),
             line("bad", 4, status="failed", prompt="forbidden")]
    page = contact_sheet.render("b", grid[:3] + plain + grid[3:])
    for item in grid + plain:
        assert page.count(f"id='{item['item_id']}'") == 1, item["item_id"]
    assert page.count("<tr>") == 3  # the sweep's grid: header, one row per scale
    others = page.split("<section class='others'>")[1]
    assert "Not swept (3 items)" in others
    assert "href='tree/0.png'" in others and "href='tree/1.png'" in others
    assert "a lone tree" in others and "&quot;seed&quot;: 5" in others
    assert "<video src='clip/0.mp4' controls" in others
    assert "nsfw refused" in others and "forbidden" in others
    assert "g0/0.png" not in others and "/home/me" not in page


def test_the_demo_sheet_shows_every_item_of_examples_sweep(tmp_path: Path) -> None:
    """examples/sweep.jsonl mixes sweeps on different fields, a repeat and a plain row."""
    specs = read_and_check([EXAMPLES / "sweep.jsonl"]).items
    store = Store(fakeredis.FakeRedis())
    store.register("b", {"name": "demo"}, [NewItem(
        s.item_id, s.file, s.line, s.model, s.input,
        {"sweep": json.dumps(s.sweep)} if s.sweep else {}) for s in specs])
    for spec in specs:
        video = "video" in spec.model
        out = [{"index": 0, "key": f"b/{spec.item_id}/0.{'mp4' if video else 'png'}",
                "bytes": 1, "sha256": "00", "source_url": "x",
                "content_type": "video/mp4" if video else "image/png"}]
        store.transition("b", spec.item_id, expect=(keys.PENDING,), to=keys.COMPLETED,
                         values={"outputs": out})
    write_contact_sheet(store, LocalBucket(tmp_path), "b")
    page = (tmp_path / "b" / "index.html").read_text()
    assert len(specs) == 16
    for spec in specs:
        assert f"id='{spec.item_id}'" in page and f"'{spec.item_id}/0." in page
    assert page.count("<img ") == 14 and page.count("<video ") == 2
    assert "Not swept (1 item)" in page  # wide-banner, the one row without a sweep


class Lookups:
    """Counts every read of an item's fields; past `budget` reads, gives up (so a render
    that is not linear fails fast instead of taking minutes)."""

    def __init__(self, budget: int | None = None) -> None:
        self.count, self.budget = 0, budget

    def read(self) -> None:
        self.count += 1
        if self.budget is not None and self.count > self.budget:
            raise AssertionError(f"more than {self.budget} lookups")


class Counted(Mapping[str, Any]):
    """A manifest line (or its sweep record) whose every field read is counted."""

    def __init__(self, data: Mapping[str, Any], lookups: Lookups) -> None:
        self.data, self.lookups = data, lookups

    def __getitem__(self, key: str) -> Any:
        self.lookups.read()
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def zip_lines(n: int, fields: int, lookups: Lookups) -> list[Counted]:
    """One zip row of `n` items over `fields` fields (prompt, seed, scale)."""
    out = []
    for k in range(n):
        every: dict[str, Any] = {"prompt": f"p{k}", "seed": k, "scale": k / n}
        axes = dict(list(every.items())[:fields])
        sweep = Counted({"axes": Counted(axes, lookups)}, lookups)
        raw = line(f"i{k}", 1, outputs=["0.png"], **axes)
        out.append(Counted({**raw, "sweep": sweep}, lookups))
    return out


def cube_lines(n: int, lookups: Lookups) -> list[Counted]:
    """A crossed sweep of `n` items: 10 values of c, the rest split between a and b."""
    sides = {100: (5, 2), 1000: (10, 10)}[n]
    combos = [(a, b, c) for a in range(sides[0]) for b in range(sides[1]) for c in range(10)]
    return [Counted({**line(f"i{k}", 1, outputs=["0.png"]),
                     "sweep": Counted({"axes": {"a": a, "b": b, "c": c}}, lookups)}, lookups)
            for k, (a, b, c) in enumerate(combos)]


@pytest.mark.parametrize("shape", ["zip of 2 fields", "zip of 3 fields", "crossed"])
def test_ten_times_the_items_costs_at_most_twelve_times_the_work(shape: str) -> None:
    def measured(n: int, budget: int | None) -> tuple[int, int]:
        lookups = Lookups(budget)
        lines = (cube_lines(n, lookups) if shape == "crossed"
                 else zip_lines(n, int(shape.split()[2]), lookups))
        page = contact_sheet.render("b", lines)
        assert all(f"id='i{k}'" in page for k in range(n))
        return lookups.count, len(page)

    small_lookups, small_page = measured(100, budget=100 * 100)
    big_lookups, big_page = measured(1000, budget=12 * small_lookups)
    assert big_lookups <= 12 * small_lookups and big_page <= 12 * small_page


def chromium() -> str:
    return shutil.which("chromium") or shutil.which("chromium-browser") or ""


@pytest.mark.skipif(not chromium(), reason="Debian's chromium is not installed "
                    "(python3 dev.py test installs it)")
def test_chromium_shows_every_item_the_sweep_as_a_3x3_grid(tmp_path: Path) -> None:
    store, bucket = stored_batch(tmp_path / "bucket", sweep_items() + side_items())
    write_contact_sheet(store, bucket, "b")
    shot = tmp_path / "shot.png"
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
                    "--window-size=1200,2200", f"--screenshot={shot}",
                    (tmp_path / "bucket" / "b" / "index.html").as_uri()],
                   check=True, capture_output=True, timeout=90)
    centres = colour_centres(Image.open(shot).convert("RGB"))
    assert len(centres) == 13, f"only {len(centres)} of 13 outputs visible"
    grid = [centres[c] for c in COLOURS[:9]]
    xs = sorted({round(x / 40) for x, _ in grid})
    ys = sorted({round(y / 40) for _, y in grid})
    assert (len(xs), len(ys)) == (3, 3), centres
    # Row = scale (first axis), column = prompt (second axis), in sweep order.
    for n in range(9):
        row, col = divmod(n, 3)
        x, y = centres[COLOURS[n]]
        assert xs.index(round(x / 40)) == col and ys.index(round(y / 40)) == row
    # Below the grid, the seed sweep in a column of its own, then the two plain items side
    # by side.
    (s1x, s1y), (s2x, s2y), (p1x, p1y), (p2x, p2y) = (centres[c] for c in COLOURS[9:])
    assert max(y for _, y in grid) < s1y < s2y < p1y and abs(s1x - s2x) < 5
    assert abs(p1y - p2y) < 5 and p1x < p2x


def colour_centres(image: Image.Image) -> dict[tuple[int, int, int], tuple[float, float]]:
    """Centre of each test colour found in the screenshot (its pixels' mean position)."""
    width, height = image.size
    pixels = image.load()
    assert pixels is not None
    found: dict[tuple[int, int, int], list[tuple[int, int]]] = {}
    wanted = set(COLOURS)
    for y in range(0, height, 4):
        for x in range(0, width, 4):
            colour = pixels[x, y]
            if colour in wanted:
                found.setdefault(colour, []).append((x, y))
    return {c: (sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts))
            for c, pts in found.items() if len(pts) > 20}
