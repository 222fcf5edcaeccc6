"""A learned codec through the one way to run work, as a user smoke-tests it with no download:
``bench run --codec bmshj2018-hyperprior --init random --dataset kodak --limit 2``."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.codecs import container
from bench.runner import Experiment, run
from bench.store import read_table
from bench.weights import WeightsError


def test_random_init_run_writes_real_rows_from_stored_bytes(kodak_dir, tmp_path, cache):
    out = tmp_path / "r"
    exp = Experiment(dataset="kodak", data_dir=str(kodak_dir), codecs=["bmshj2018-hyperprior"], points=[1],
                     metrics=["psnr"], init="random", out=str(out), limit=2)
    res = run(exp)
    assert res.units_coded == 2 and not [p for p in res.problems if not p.startswith("note:")]
    df = read_table(out, "per_image")
    assert set(df.weights) == {"random"} and len(df) == 2
    for row in df.itertuples():
        data = (out / "bitstreams" / "kodak" / "bmshj2018-hyperprior" / "1" / "s0" / f"{row.image_id}.bin").read_bytes()
        assert row.bits == 8 * len(data) and row.bpp == pytest.approx(8 * len(data) / (768 * 512))
        box = container.unpack(data)
        assert box.point == 1 and sum(container.bits_breakdown(data).values()) == row.bits
        assert row.payload_bits + row.side_bits + row.container_bits == row.bits
        assert row.container_bits == container.bits_breakdown(data)["container"] > 0
    assert run(exp).units_coded == 0  # resumed: same key
    # without --init random the same codec needs its official files, named before any work
    with pytest.raises(WeightsError, match=r"bmshj2018-hyperprior-1-7eb97409\.pth\.tar[\s\S]*--init random"):
        run(Experiment(**{**exp.__dict__, "init": "pretrained"}))


def test_cli_smoke_test_prints_rows_and_refuses_to_plot_them(kodak_dir, tmp_path, cache):
    res = CliRunner().invoke(app, ["run", "--codec", "bmshj2018-hyperprior", "--init", "random", "--dataset", "kodak",
                                   "--data-dir", str(kodak_dir), "--limit", "1", "--points", "2", "--metrics", "psnr",
                                   "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "bmshj2018-hyperprior (random weights)" in res.output
    assert "no plots: refusing to plot rows computed with random weights" in res.output
    assert not (tmp_path / "r" / "plots" / "psnr.png").exists()
