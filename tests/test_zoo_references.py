"""CompressAI's published Kodak curves for the rest of its model zoo (results/reference/kodak/):
each loads, names an existing zoo card with the same rate points, is a sane rate-distortion curve
and cites the exact file version it was copied from."""
from __future__ import annotations

import pytest

from bench import cards, reference

ARCHS = ["bmshj2018-factorized", "mbt2018-mean", "mbt2018", "cheng2020-anchor", "cheng2020-attn"]
CARD_NAMES = [arch + suffix for arch in ARCHS for suffix in ("", "-msssim")]
COLUMNS = ["bpp", "psnr", "ms_ssim_rgb"]


def _ref(card_name: str) -> reference.Reference:
    return reference.load(f"compressai-{card_name}")


@pytest.mark.parametrize("card_name", CARD_NAMES)
def test_loads_and_names_its_card(card_name):
    ref = _ref(card_name)
    assert ref.name == f"compressai-{card_name}" and ref.path.parent.name == "kodak"
    assert ref.codec == card_name and ref.dataset == "kodak" and ref.meta["n_images"] == 24
    card = cards.get("codec", ref.codec)
    assert card.target == "compressai-zoo"
    arch = card_name.removesuffix("-msssim")
    metric = "ms-ssim" if card_name.endswith("-msssim") else "mse"
    assert card.get("params") == {"arch": arch, "metric": metric}
    assert ref.meta["path"] == f"results/image/kodak/compressai-{arch}_{metric}_cpu.json"
    cards.get("dataset", ref.dataset)


@pytest.mark.parametrize("card_name", CARD_NAMES)
def test_points_are_the_cards_points(card_name):
    ref = _ref(card_name)
    points = cards.get("codec", card_name).get("points")
    assert list(ref.rows) == [str(p) for p in points]
    assert len(points) == (6 if card_name.startswith("cheng2020") else 8)
    assert all(list(row) == COLUMNS for row in ref.rows.values())


@pytest.mark.parametrize("card_name", CARD_NAMES)
def test_a_rate_distortion_curve(card_name):
    rows = [_ref(card_name).rows[p] for p in _ref(card_name).rows]  # in point order
    bpp = [r["bpp"] for r in rows]
    psnr = [r["psnr"] for r in rows]
    msssim = [r["ms_ssim_rgb"] for r in rows]
    assert all(a < b for a, b in zip(bpp, bpp[1:])), "bpp must increase with the quality"
    assert all(a < b for a, b in zip(psnr, psnr[1:])), "PSNR must increase with bpp"
    assert all(a < b for a, b in zip(msssim, msssim[1:]))
    assert 0.05 < bpp[0] and bpp[-1] < 2.5
    assert 20 < psnr[0] and psnr[-1] < 45 and 0.8 < msssim[0] and msssim[-1] < 1


@pytest.mark.parametrize("arch", ARCHS)
def test_msssim_models_trade_psnr_for_ms_ssim(arch):
    """Same arch, both metrics: at about the same rate the MS-SSIM model has the higher
    MS-SSIM and the lower PSNR (a check that the two files are not swapped)."""
    mse, msssim = _ref(arch), _ref(f"{arch}-msssim")
    for row in msssim.rows.values():
        nearest = min(mse.rows.values(), key=lambda r: abs(r["bpp"] - row["bpp"]))
        if abs(nearest["bpp"] / row["bpp"] - 1) < 0.25:
            assert row["ms_ssim_rgb"] > nearest["ms_ssim_rgb"] and row["psnr"] < nearest["psnr"]


@pytest.mark.parametrize("card_name", CARD_NAMES)
def test_source_is_built_from_repository_commit_and_path(card_name):
    meta = _ref(card_name).meta
    assert meta["repository"] == "InterDigitalInc/CompressAI"
    assert len(meta["commit"]) == 40 and int(meta["commit"], 16) >= 0
    assert meta["source"] == f"https://github.com/{meta['repository']}/blob/{meta['commit']}/{meta['path']}"


@pytest.mark.parametrize("card_name", CARD_NAMES)
def test_tolerance_is_the_hyperpriors_and_says_it_was_not_measured(card_name):
    """Same tolerance as the hyperprior's curve of the same training metric: MSE curves allow 0.1 dB
    of PSNR (published before CompressAI rounded to 8 bit), MS-SSIM curves 0.05 dB."""
    ref = _ref(card_name)
    mse = not card_name.endswith("-msssim")
    assert {q: ref.tolerance(q) for q in COLUMNS} == {"bpp": ("rel", 0.01), "psnr": ("abs", 0.1 if mse else 0.05),
                                                      "ms_ssim_rgb": ("abs", 1.0e-3)}
    if mse:
        assert ref.meta["tolerance"] == reference.load("compressai-bmshj2018-hyperprior").meta["tolerance"]
        assert "before eval_model rounded" in ref.meta["notes"]
    assert "not measured" in ref.meta["notes"] and "_cuda.json" not in ref.meta["path"]


def test_every_zoo_card_but_the_hyperprior_msssim_has_a_reference():
    names = set(reference.available("kodak"))
    assert {f"kodak/compressai-{c}" for c in CARD_NAMES + ["bmshj2018-hyperprior"]} <= names
