"""``bench report``: a real run (2 Kodak images, jpeg + webp, psnr + ssim, one jpeg point that
fails on every image and whose name is an HTML injection probe) rendered to one HTML page,
checked by parsing (sections, tables equal to numbers computed from the run's files, every image
a data: URI, every text escaped) and in headless Chromium (no console error, no request leaving
the file, every image decodes, the screenshot shows the plots' lines).

Chromium: Debian's ``chromium`` driven by Playwright (``BENCH_CHROMIUM`` overrides the path).
Without them the browser test skips, which fails under ``BENCH_CI=1`` (tests/conftest.py)."""
from __future__ import annotations

import base64
import importlib.util
import io
import math
import os
import shutil
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from bench.data.images import read_rgb
from bench.report import CROP, build_report, centre_crop, write_report

BAD = "<img src=x onerror=alert(1)>"  # a jpeg "point": every unit fails, and its text must stay text
CODECS = [{"name": "jpeg", "points": [20, 80, BAD]}, {"name": "webp", "points": [20, 80]}]
GOOD_POINTS = [("jpeg", "20"), ("jpeg", "80"), ("webp", "20"), ("webp", "80")]
IMAGES = ["kodim01", "kodim02"]
METRICS = ["psnr", "ssim"]


@pytest.fixture(scope="module")
def run_dir(kodak_dir, tmp_path_factory):
    from bench.runner import Experiment, run

    out = tmp_path_factory.mktemp("report") / "run"
    res = run(Experiment(dataset="kodak", data_dir=str(kodak_dir), codecs=CODECS, metrics=METRICS, out=str(out),
                         limit=len(IMAGES)))
    assert res.units_failed == len(IMAGES) and res.units_coded == len(IMAGES) * len(GOOD_POINTS), res
    return out


@pytest.fixture(scope="module")
def report(run_dir):
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    return path


class Page(HTMLParser):
    """Sections (id -> tables as rows of cell texts), every element's attributes, all text."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.sections: dict[str, list[list[list[str]]]] = {}
        self.order: list[str] = []
        self.elements: list[tuple[str, dict, str | None]] = []  # (tag, attrs, section)
        self.texts: list[str] = []
        self._section = None
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self._section = attrs["id"]
            self.order.append(self._section)
            self.sections[self._section] = []
        elif tag == "table":
            self.sections[self._section].append([])
        elif tag == "tr":
            self.sections[self._section][-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        self.elements.append((tag, attrs, self._section))

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.sections[self._section][-1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "section":
            self._section = None

    def handle_data(self, data):
        self.texts.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def imgs(self, cls: str | None = None) -> list[dict]:
        return [a for t, a, _ in self.elements if t == "img" and (cls is None or a.get("class") == cls)]

    def table(self, section: str, first: str | None = None) -> list[dict[str, str]]:
        """Rows (header -> cell) of the section's first table, or of its table whose first header is ``first``."""
        tables = [t for t in self.sections[section] if first is None or t[0][0] == first]
        head, *rows = tables[0]
        return [dict(zip(head, r)) for r in rows]


@pytest.fixture(scope="module")
def page(report):
    return Page(report.read_text(encoding="utf-8"))


def decoded(src: str) -> bytes:
    head, b64 = src.split(",", 1)
    assert head.endswith(";base64")
    return base64.b64decode(b64)


def test_sections_in_order_and_page_self_contained(page):
    bd = ["bdrate"] if importlib.util.find_spec("bench.bdrate") else []
    assert page.order == ["plots", "points", *bd, "crops", "failures", "provenance"]
    imgs = page.imgs()
    assert imgs and all(a["src"].startswith(("data:image/svg+xml;base64,", "data:image/png;base64,")) for a in imgs)
    assert len(page.imgs("plot")) == len(METRICS)
    assert len(page.imgs("crop")) == len(IMAGES) * (1 + len(GOOD_POINTS))
    assert len(imgs) == len(METRICS) + len(IMAGES) * (1 + len(GOOD_POINTS))  # nothing else, e.g. an injected <img>
    tags = {t for t, _, _ in page.elements}
    assert not tags & {"script", "link", "iframe", "object", "embed"}
    for tag, attrs, _ in page.elements:  # no reference outside the file: only in-page anchors
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)
        if "href" in attrs:
            assert attrs["href"].startswith("#"), attrs
    for a in page.imgs("plot"):
        svg = decoded(a["src"]).decode()
        assert "<svg" in svg and "xlink:href=\"http" not in svg


def test_points_table_equals_the_run_files(page, run_dir, kodak_dir):
    """Mean bpp from the stored bitstreams' sizes, PSNR from the stored reconstructions (numpy), the
    interval as t(0.975, n-1)·sd/√n: the table's cells, to their 4 printed decimals."""
    rows = {(r["codec"], r["point"]): r for r in page.table("points")}
    assert set(rows) == set(GOOD_POINTS)
    header = list(page.table("points")[0])
    assert "psnr (dB), ↑ higher is better" in header and "ssim, ↑ higher is better" in header
    for codec, point in GOOD_POINTS:
        bpps, psnrs = [], []
        for name in IMAGES:
            ref = np.asarray(Image.open(kodak_dir / f"{name}.png").convert("RGB"), np.float64) / 255
            unit = f"kodak/{codec}/{point}/s0/{name}"
            rec = np.asarray(Image.open(run_dir / "recon" / f"{unit}.png"), np.float64) / 255
            bpps.append(8 * (run_dir / "bitstreams" / f"{unit}.bin").stat().st_size / (ref.shape[0] * ref.shape[1]))
            psnrs.append(10 * np.log10(1 / np.mean((ref - rec) ** 2)))
        row = rows[(codec, point)]
        assert row["n images"] == str(len(IMAGES)) and row["weights"] == "none"
        assert float(row["mean bpp"]) == pytest.approx(np.mean(bpps), abs=1e-4)
        mean, half = (float(x) for x in row["psnr (dB), ↑ higher is better"].split(" ± "))
        assert mean == pytest.approx(np.mean(psnrs), abs=2e-3)
        t_half = stats.t.ppf(0.975, len(IMAGES) - 1) * np.std(psnrs, ddof=1) / math.sqrt(len(IMAGES))
        assert half == pytest.approx(t_half, rel=1e-3)


def test_failed_units_listed_with_their_errors_as_text(page, report):
    failed = page.table("failures")
    assert [(r["codec"], r["point"], r["image"]) for r in failed] == [("jpeg", BAD, name) for name in IMAGES]
    assert all(r["error"] == f"invalid literal for int() with base 10: {BAD!r}" for r in failed), failed
    raw = report.read_text(encoding="utf-8")
    assert BAD not in raw and html_escaped(BAD) in raw


def html_escaped(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_crops_are_the_same_centre_region_of_original_and_reconstructions(page, run_dir, kodak_dir):
    crops = {a["alt"]: np.asarray(Image.open(io.BytesIO(decoded(a["src"]))).convert("RGB"))
             for a in page.imgs("crop")}
    for name in IMAGES:
        original = read_rgb(kodak_dir / f"{name}.png")[0]
        assert np.array_equal(crops[f"original {name}"], centre_crop(original, CROP))
        assert crops[f"original {name}"].shape == (CROP, CROP, 3)
    # alts repeat per image; the last strip is kodim02's
    for codec, point in GOOD_POINTS:
        recon = read_rgb(run_dir / "recon" / "kodak" / codec / point / "s0" / f"{IMAGES[-1]}.png")[0]
        assert np.array_equal(crops[f"{codec} @ {point}"], centre_crop(recon, CROP))
    captions = " ".join(page.texts)
    assert "bpp, PSNR" in captions and "dB" in captions


def test_provenance_names_versions_device_and_codecs(page):
    import PIL

    import bench

    run = {r[""]: r["value"] for r in page.table("provenance", "")}
    assert run["bench"] == bench.__version__ and run["device"] == "cpu" and run["dtype"] == "float32"
    packages = {r["package"]: r["version"] for r in page.table("provenance", "package")}
    assert packages["pillow"] == PIL.__version__
    codec_fields = {(r["codec"], r["field"]): r["value"] for r in page.table("provenance", "codec")}
    assert codec_fields[("jpeg", "adapter")] == "pillow-jpeg" and codec_fields[("webp", "weights")] == "none"
    assert codec_fields[("jpeg", "provenance.libjpeg_turbo")]
    metrics = {r["metric"]: r["version"] for r in page.table("provenance", "metric")}
    assert set(metrics) == set(METRICS)


def test_bdrate_section_when_the_module_exists(page):
    """With bench.bdrate (another branch), one row per metric for webp against the anchor jpeg, each
    with a value; without it, no section at all (no placeholder claiming results)."""
    if importlib.util.find_spec("bench.bdrate") is None:
        assert "bdrate" not in page.sections
        return
    rows = page.table("bdrate")
    assert [(r["anchor"], r["test"]) for r in rows] == [("jpeg", "webp")] * len(METRICS)
    assert all(r["BD-rate [interval]"].endswith("]") and "%" in r["BD-rate [interval]"] for r in rows), rows


def test_no_bdrate_section_without_the_module(run_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "bench.bdrate", None)  # import raises ImportError
    assert "bdrate" not in Page(build_report(run_dir, images=0)).order


def test_cli_writes_the_page_and_refuses_a_non_run(run_dir, tmp_path):
    from typer.testing import CliRunner

    from bench.cli import app

    out = tmp_path / "r.html"
    res = CliRunner().invoke(app, ["report", str(run_dir), "--out", str(out), "--images", "1"])
    assert res.exit_code == 0, res.output
    assert len(Page(out.read_text(encoding="utf-8")).imgs("crop")) == 1 + len(GOOD_POINTS)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # as any new file, not the temporary file's 0600
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "per_image.parquet does not exist" in res.output


def chromium_path() -> str | None:
    return os.environ.get("BENCH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def test_page_in_headless_chromium(report, page, tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -r requirements.lock)")
    exe = chromium_path()
    if not exe:
        pytest.skip("no chromium executable (apt-get install chromium, or set BENCH_CHROMIUM)")
    problems, outside = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe)
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 900})
            tab.on("console", lambda m: m.type in ("error", "warning") and problems.append(f"{m.type}: {m.text}"))
            tab.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
            tab.on("requestfailed", lambda r: problems.append(f"request failed: {r.url[:80]}"))

            def gate(route):
                if route.request.url.startswith(("file:", "data:")):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            tab.route("**/*", gate)
            tab.goto(report.as_uri(), wait_until="load")
            images = tab.evaluate("Array.from(document.images).map(i => ({cls: i.className, alt: i.alt, "
                                  "complete: i.complete, w: i.naturalWidth, h: i.naturalHeight}))")
            shot = tmp_path / "report.png"
            tab.screenshot(path=str(shot), full_page=True)
            boxes = [tab.locator("img.plot").nth(i).bounding_box() for i in range(len(METRICS))]
        finally:
            browser.close()
    assert problems == [] and outside == []
    assert len(images) == len(page.imgs())
    assert all(i["complete"] and i["w"] > 0 and i["h"] > 0 for i in images), images
    assert all(i["w"] == CROP for i in images if i["cls"] == "crop")
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    for box in boxes:  # each plot as painted: mostly white, with axes and both codecs' lines in matplotlib's colours
        x, y, w, h = (round(box[k]) for k in ("x", "y", "width", "height"))
        area = rgb[y:y + h, x:x + w]
        assert area.shape[0] > 200 and area.shape[1] > 300
        non_white = (area.min(axis=2) < 230).mean()
        assert 0.01 < non_white < 0.5, non_white
        for colour in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):  # C0 (jpeg), C1 (webp)
            near = (np.abs(area - np.array(colour)).max(axis=2) < 40).sum()
            assert near > 50, (colour, near)


def test_weight_rows_from_learned_codec_fingerprints():
    """The shapes bench.codecs.torch_base.fingerprint writes: weight files with their sha256, or a random init's seed."""
    from bench.report import _weight_rows

    files = '{"libraries": {"torch": "2"}, "weights": {"bmshj-1": {"expected": "ab", "sha256": "abcd"}, ' \
            '"bmshj-1b": {"expected": "cd", "sha256": null}}}'
    assert _weight_rows("b", "1", files) == [("b", "1", "bmshj-1", "abcd"), ("b", "1", "bmshj-1b", "file absent")]
    assert _weight_rows("b", "2", '{"weights": {"init": "random", "seed": 7}}') == \
        [("b", "2", "random init (smoke test, not results)", "7")]
    assert _weight_rows("jpeg", "50", '{"pillow": "13"}') == []
