"""The contact sheet: a 3×3 sweep renders as a 3×3 grid of its real outputs in Chromium."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import fakeredis
import pytest
from PIL import Image

from rcbatch.worker import contact_sheet, keys
from rcbatch.worker.bucket import LocalBucket
from rcbatch.worker.manifest import write_contact_sheet
from rcbatch.worker.state import NewItem, Store

SCALES = [0.3, 0.5, 0.7]
PROMPTS = ["a red fox", "a blue whale", "a green frog"]
COLOURS = [(230, 30, 30), (30, 200, 30), (30, 30, 230), (230, 230, 30), (30, 230, 230),
           (230, 30, 230), (120, 60, 10), (250, 140, 0), (90, 0, 160)]


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, "PNG")
    return buffer.getvalue()


def sweep_batch(tmp_path: Path, *, failed: int | None = None) -> tuple[Store, LocalBucket]:
    store = Store(fakeredis.FakeRedis())
    bucket = LocalBucket(tmp_path)
    items = []
    for n, (scale, prompt) in enumerate((s, p) for s in SCALES for p in PROMPTS):
        sweep = {"axes": {"scale": scale, "prompt": prompt}, "repeat": 0}
        items.append(NewItem(f"i{n}", "s.jsonl", 1, "bytedance/dreamina-4-0/text-to-image",
                             {"prompt": prompt, "scale": scale}, {"sweep": json.dumps(sweep)}))
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
    store, bucket = sweep_batch(tmp_path, failed=4)
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


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed "
                    "(python3 dev.py test installs it)")
def test_chromium_shows_the_outputs_as_a_3x3_grid(tmp_path: Path) -> None:
    store, bucket = sweep_batch(tmp_path / "bucket")
    write_contact_sheet(store, bucket, "b")
    shot = tmp_path / "shot.png"
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
                    "--window-size=1200,1100", f"--screenshot={shot}",
                    (tmp_path / "bucket" / "b" / "index.html").as_uri()],
                   check=True, capture_output=True, timeout=90)
    centres = colour_centres(Image.open(shot).convert("RGB"))
    assert len(centres) == 9, f"only {len(centres)} of 9 outputs visible"
    xs = sorted({round(x / 40) for x, _ in centres.values()})
    ys = sorted({round(y / 40) for _, y in centres.values()})
    assert (len(xs), len(ys)) == (3, 3), centres
    # Row = scale (first axis), column = prompt (second axis), in sweep order.
    for n in range(9):
        row, col = divmod(n, 3)
        x, y = centres[COLOURS[n]]
        assert xs.index(round(x / 40)) == col and ys.index(round(y / 40)) == row


def colour_centres(image: Image.Image) -> dict[tuple[int, int, int], tuple[float, float]]:
    """Centre of each test colour found in the screenshot (its pixels' mean position)."""
    width, height = image.size
    pixels = image.load()
    found: dict[tuple[int, int, int], list[tuple[int, int]]] = {}
    wanted = set(COLOURS)
    for y in range(0, height, 4):
        for x in range(0, width, 4):
            colour = pixels[x, y]
            if colour in wanted:
                found.setdefault(colour, []).append((x, y))
    return {c: (sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts))
            for c, pts in found.items() if len(pts) > 20}
