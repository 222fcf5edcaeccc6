"""The command line as a user types it: exit codes, and what the printed tables say."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from bench import cards, registry
from bench.cli import app

runner = CliRunner()


def table_rows(output: str) -> list[list[str]]:
    """The cells of each row of the Rich tables in ``output``; a row's wrapped continuation
    lines (empty first cell) are joined to its cells with a space."""
    rows = []
    for line in output.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip().strip("│").split("│")]
            if cells[0]:
                rows.append(cells)
            elif rows and len(cells) == len(rows[-1]):
                rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells)]
    return rows


def by_name(output: str) -> dict[str, list[str]]:
    rows = table_rows(output)
    named = {r[0]: r for r in rows}
    assert len(named) == len(rows), "duplicate names"
    return named


def invoke(*args: str, code: int = 0):
    res = runner.invoke(app, list(args))
    assert res.exit_code == code, res.output
    return res


def header(output: str) -> list[str]:
    """Column names of the first Rich table in ``output``."""
    line = next(ln for ln in output.splitlines() if ln.startswith("┃"))
    return [c.strip() for c in line.strip().strip("┃").split("┃")]


def test_metrics_list_rows():
    out = invoke("metrics", "list").stdout
    col = {name: i for i, name in enumerate(header(out))}
    rows = {name: [cells[col[c]] for c in ("metric", "ref", "learned", "better", "range", "colour space",
                                           "available", "per")]
            for name, cells in by_name(out).items()}
    assert set(rows) == set(registry.entries("metric"))
    # metric: (reference, learned, better), from the metrics' published definitions
    known = {"psnr": ("FR", "no", "higher"), "ssim": ("FR", "no", "higher"), "ms_ssim": ("FR", "no", "higher"),
             "gmsd": ("FR", "no", "lower"), "nlpd": ("FR", "no", "lower"), "mad": ("FR", "no", "lower"),
             "lpips": ("FR", "yes", "lower"), "dists": ("FR", "yes", "lower"), "musiq": ("NR", "yes", "higher"),
             "fid": (None, "yes", "lower"), "kid_patch": (None, "yes", "lower"), "miou": (None, None, "higher"),
             "clip_score": (None, "yes", "higher")}
    for name, (ref, learned, better) in known.items():
        cells = rows[name]
        assert cells[3] == better, (name, cells)
        assert ref is None or cells[1] == ref, (name, cells)
        assert learned is None or cells[2] == learned, (name, cells)
    assert rows["psnr"][4].startswith("dB") and rows["psnr"][5] == "RGB" and rows["psnr"][6] == "yes"
    assert rows["ms_ssim"][5].startswith("Y") and rows["ms_ssim_rgb"][5] == "RGB"  # the two conventions, named apart
    assert rows["fid"][7] == "set" and rows["psnr"][7] == "image"
    assert "pyiqa: PolyForm Noncommercial 1.0.0" in out and "] pyiqa: PolyForm" in out


def test_codecs_and_datasets_list_rows():
    rows = by_name(invoke("codecs", "list").stdout)
    assert set(rows) == set(cards.cards("codec"))
    for card, adapter in (("jpeg", "pillow-jpeg"), ("jpeg-444", "pillow-jpeg"), ("webp", "pillow-webp")):
        points = ", ".join(map(str, cards.get("codec", card).get("points")))
        assert rows[card][1] == adapter and rows[card][2] == f"quality: {points}", rows[card]
        assert rows[card][5] == "yes"
    assert "4:4:4" in rows["jpeg-444"][3] and "4:2:0" in rows["jpeg"][3]
    for card in ("msillm", "hific", "cdc-x", "perco", "hevc-x265", "vtm"):  # every codec says its licence
        assert rows[card][4], card
    assert "CC-BY-NC" in rows["msillm"][4].replace(" ", "")
    assert "sampler ddim, 65 steps, γ 0.8" in rows["cdc-x"][2] and "sampler ddim, auto steps" in rows["perco"][2]
    rows = by_name(invoke("datasets", "list").stdout)
    assert rows["kodak"][2] == "24" and rows["coco-mini"][2] == "50" and rows["coco-mini"][1] == "coco"
    assert rows["samples"][4].startswith("yes (4 images")  # shipped inside scikit-image


def test_datasets_check(kodak_dir, tmp_path):
    out = runner.invoke(app, ["datasets", "check", "kodak", "--data-dir", str(kodak_dir)])
    assert out.exit_code == 0 and "24 of 24 images OK" in out.stdout
    out = runner.invoke(app, ["datasets", "check", "kodak", "--data-dir", str(tmp_path)])
    assert out.exit_code == 1 and "kodim01.png" in out.output


def psnr_by_hand(ref_path, rec_path) -> float:
    ref = np.asarray(Image.open(ref_path).convert("RGB"), np.float64) / 255
    rec = np.asarray(Image.open(rec_path).convert("RGB"), np.float64) / 255
    return float(10 * np.log10(1 / (np.mean((ref - rec) ** 2) + 1e-8)))  # pyiqa adds 1e-8 to the MSE


def test_run_plot_and_summary(kodak_dir, tmp_path):
    out = tmp_path / "run"
    res = invoke("run", "--dataset", "kodak", "--data-dir", str(kodak_dir), "--codec", "jpeg,webp",
                 "--points", "10,50,90", "--metrics", "psnr,ms_ssim", "--out", str(out), "--limit", "1")
    assert "6 units coded, 0 reused, 0 failed, 12 metric values computed" in res.stdout
    printed = table_rows(res.stdout)
    header = next(line for line in res.stdout.splitlines() if line.startswith("┃"))
    assert [c.strip() for c in header.strip("┃").split("┃")] == ["codec", "point", "seed", "bpp", "ms_ssim", "psnr"]
    # one row per codec and point, in bpp order within a codec
    assert [(r[0], r[1]) for r in printed] == [(c, p) for c in ("jpeg", "webp") for p in ("10", "50", "90")]
    per_set = pd.read_parquet(out / "per_set.parquet")
    assert len(per_set) == 12 and set(per_set["n_images"]) == {1}
    for codec, point, seed, bpp, ms_ssim, psnr in printed:
        unit = f"kodak/{codec}/{point}/s0/kodim01"
        nbytes = (out / "bitstreams" / f"{unit}.bin").stat().st_size
        assert float(bpp) == pytest.approx(8 * nbytes / (768 * 512), abs=5e-5)  # rounded to 4 decimals
        expected = psnr_by_hand(kodak_dir / "kodim01.png", out / "recon" / f"{unit}.png")
        assert float(psnr) == pytest.approx(expected, rel=1e-5, abs=5e-5)  # pyiqa: float32
        stored = per_set[(per_set.codec == codec) & (per_set.point == point) & (per_set.metric == "ms_ssim")]
        assert seed == "0" and ms_ssim == f"{stored['value'].item():.4f}"
    # summary prints the same table; plot writes (and lists) one PNG and one SVG per metric
    assert table_rows(invoke("summary", str(out)).stdout) == printed
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["ms_ssim.png", "ms_ssim.svg", "psnr.png", "psnr.svg"]
    res = invoke("plot", str(out), "--out", str(tmp_path / "p"), "--metrics", "psnr")
    assert res.stdout.split() == [str(tmp_path / "p" / "psnr.png"), str(tmp_path / "p" / "psnr.svg")]
    assert "psnr (dB), ↑ higher is better" in (tmp_path / "p" / "psnr.svg").read_text()


def test_experiment_yaml(kodak_dir, tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"dataset: kodak\ndata_dir: {kodak_dir}\ncodecs: [{{name: webp, points: [20]}}]\n"
                   f"metrics: [psnr]\nout: {tmp_path / 'r'}\nlimit: 1\n")
    res = invoke("run", str(exp), "--no-plot")
    assert "1 units coded" in res.stdout and not (tmp_path / "r" / "plots").exists()
    [row] = table_rows(res.stdout)
    assert row[:3] == ["webp", "20", "0"]
    psnr = psnr_by_hand(kodak_dir / "kodim01.png", tmp_path / "r" / "recon" / "kodak/webp/20/s0/kodim01.png")
    assert float(row[4]) == pytest.approx(psnr, rel=1e-5, abs=5e-5)
    exp.write_text("dataset: kodak\ncodex: [jpeg]\n")
    res = runner.invoke(app, ["run", str(exp)])
    assert res.exit_code == 2 and "unknown keys ['codex']" in res.output


@pytest.mark.parametrize("args, expected", [
    (["--codec", "jpg"], "Did you mean jpeg"),
    (["--metrics", "psnrr"], "Valid metrics"),
    (["--dataset", "kodac"], "Did you mean kodak"),
])
def test_unknown_names_exit_2_with_valid_ones(args, expected, tmp_path):
    res = runner.invoke(app, ["run", "--out", str(tmp_path / "r"), *args])
    assert res.exit_code == 2 and expected in res.output


def test_bad_images_exit_1_with_problems(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "x.png").write_bytes(b"nope")
    res = runner.invoke(app, ["run", "--dataset", "folder", "--data-dir", str(tmp_path / "imgs"), "--codec", "jpeg",
                              "--points", "50", "--metrics", "psnr", "--out", str(tmp_path / "r"), "--no-plot"])
    assert res.exit_code == 1 and "x.png: not a readable image" in res.output


def test_plot_refuses_random_weight_rows_with_a_message(tmp_path):
    rows = [{"run_id": "r", "dataset": "kodak", "codec": "zoo-mbt", "point": "1", "seed": 0, "metric": "psnr",
             "value": 30.0, "n_images": 1, "aggregate": "mean", "mean_bpp": 0.3, "weights": "random"}]
    (tmp_path / "r").mkdir()
    pd.DataFrame(rows).to_parquet(tmp_path / "r" / "per_set.parquet")
    res = runner.invoke(app, ["plot", str(tmp_path / "r")])
    assert res.exit_code == 2 and "random weights (codec zoo-mbt)" in res.output
