"""End-to-end behaviour of the one way to run work: rates, stored bytes, resume, errors."""
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.codecs.classical import PillowJPEG
from bench.data.images import read_rgb
from bench.runner import Experiment, ExperimentError, run
from bench.store import PER_IMAGE_COLUMNS, PER_SET_COLUMNS, RunStore, StoreError, read_table


def kodak_exp(kodak_dir, out, **kw):
    base = dict(dataset="kodak", data_dir=str(kodak_dir), codecs=["jpeg"], points=[10, 50], metrics=["psnr", "gmsd"],
                out=str(out), limit=2)
    return Experiment(**{**base, **kw})


def test_tables_rates_and_stored_bytes(kodak_dir, tmp_path):
    res = run(kodak_exp(kodak_dir, tmp_path / "r"))
    assert res.units_coded == 4 and res.metric_values == 8 and not res.problems
    df = read_table(tmp_path / "r", "per_image")
    assert PER_IMAGE_COLUMNS == list(df.columns[: len(PER_IMAGE_COLUMNS)])
    assert len(df) == 8 and not df.duplicated(["image_id", "codec", "point", "seed", "metric"]).any()
    jpeg = PillowJPEG()
    for row in df[df.metric == "psnr"].itertuples():
        stored = tmp_path / "r" / "bitstreams" / "kodak" / "jpeg" / row.point / "s0" / f"{row.image_id}.bin"
        data = stored.read_bytes()
        assert row.bits == 8 * len(data)
        assert row.payload_bits + row.side_bits + row.container_bits == row.bits  # JPEG scan / tables / markers
        assert row.payload_bits > row.side_bits > 0
        assert row.bpp == pytest.approx(8 * len(data) / (row.height * row.width))
        ref = read_rgb(kodak_dir / f"{row.image_id}.png")[0]
        assert (row.height, row.width) == ref.shape[:2]
        # the stored reconstruction is what the decoder makes from the stored bytes alone
        recon = read_rgb(tmp_path / "r" / "recon" / "kodak" / "jpeg" / row.point / "s0" / f"{row.image_id}.png")[0]
        assert np.array_equal(recon, jpeg.decode(data))
        mse = np.mean((recon.astype(float) - ref) ** 2)
        assert row.value == pytest.approx(10 * np.log10(1 / (mse / 255 ** 2)), abs=1e-3)
    per_set = read_table(tmp_path / "r", "per_set")
    assert set(PER_SET_COLUMNS) <= set(per_set.columns)
    q10 = per_set[(per_set.point == "10") & (per_set.metric == "psnr")].iloc[0]
    assert q10["n_images"] == 2 and q10["aggregate"] == "mean"
    assert q10.value == pytest.approx(df[(df.point == "10") & (df.metric == "psnr")].value.mean())
    manifest = (tmp_path / "r" / "manifest.json").read_text()
    assert '"pillow"' in manifest and '"card_hash"' in manifest and '"git"' in manifest


def test_rerun_does_no_work_and_new_metric_only_computes_it(kodak_dir, tmp_path):
    out = tmp_path / "r"
    run(kodak_exp(kodak_dir, out))
    before = (out / "per_image.parquet").stat().st_mtime_ns
    again = run(kodak_exp(kodak_dir, out))
    assert again.units_coded == 0 and again.metric_values == 0 and again.units_skipped == 4
    assert (out / "per_image.parquet").stat().st_mtime_ns == before  # nothing changed, nothing rewritten
    more = run(kodak_exp(kodak_dir, out, metrics=["psnr", "gmsd", "ssim"]))
    assert more.units_coded == 0 and more.metric_values == 4
    assert len(read_table(out, "per_image")) == 12


def test_killed_run_resumes_without_duplicates(kodak_dir, tmp_path):
    out = tmp_path / "r"
    calls = []

    def die_after_three(desc, done, total):
        calls.append(done)
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(kodak_exp(kodak_dir, out, points=[10, 30, 50]), progress=die_after_three)
    partial = read_table(out, "per_image")
    assert len(partial) == 6  # three finished units survived, tables written on the way out
    res = run(kodak_exp(kodak_dir, out, points=[10, 30, 50]))
    assert res.units_coded == 3 and res.units_skipped == 3
    df = read_table(out, "per_image")
    assert len(df) == 12 and not df.duplicated(["image_id", "codec", "point", "seed", "metric"]).any()


def test_changed_card_replaces_old_rows(kodak_dir, tmp_path):
    out = tmp_path / "r"
    run(kodak_exp(kodak_dir, out, points=[50]))
    bits_420 = read_table(out, "per_image").bits.tolist()
    card = tmp_path / "jpeg.yaml"
    card.write_text("name: jpeg\nadapter: pillow-jpeg\nparams: {subsampling: '4:4:4'}\npoints: [50]\n")
    res = run(kodak_exp(kodak_dir, out, points=[50], codecs=[str(card)]))
    assert res.units_coded == 2
    df = read_table(out, "per_image")
    assert len(df) == 4 and df.bits.tolist() != bits_420


def test_two_workers_give_the_same_numbers(kodak_dir, tmp_path):
    run(kodak_exp(kodak_dir, tmp_path / "a"))
    run(kodak_exp(kodak_dir, tmp_path / "b", workers=2))
    a = read_table(tmp_path / "a", "per_image").drop(columns=["run_id", "enc_s", "dec_s"])
    b = read_table(tmp_path / "b", "per_image").drop(columns=["run_id", "enc_s", "dec_s"])
    pd.testing.assert_frame_equal(a, b)


def test_batched_scoring_gives_the_same_numbers(kodak_dir, tmp_path):
    exp = dict(points=[10, 30, 50], metrics=["psnr", "ssim", "ms_ssim", "gmsd"])
    run(kodak_exp(kodak_dir, tmp_path / "a", **exp))
    res = run(kodak_exp(kodak_dir, tmp_path / "b", batch=3, **exp))
    assert res.units_coded == 6 and res.metric_values == 24
    a = read_table(tmp_path / "a", "per_image").drop(columns=["run_id", "enc_s", "dec_s"])
    b = read_table(tmp_path / "b", "per_image").drop(columns=["run_id", "enc_s", "dec_s"])
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5)


def test_bad_images_are_reported_and_the_rest_computed(kodak_dir, tmp_path):
    data = tmp_path / "imgs"
    data.mkdir()
    shutil.copy(kodak_dir / "kodim03.png", data / "good.png")
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rgba = np.zeros((200, 200, 4), np.uint8)
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(data / "seethrough.png")
    Image.fromarray(read_rgb(kodak_dir / "kodim05.png")[0][:100, :120]).convert("L").save(data / "tinygray.png")
    res = run(Experiment(dataset="folder", data_dir=str(data), codecs=["jpeg"], points=[50],
                         metrics=["psnr", "ms_ssim"], out=str(tmp_path / "r")))
    text = "\n".join(res.problems)
    assert "broken.png: not a readable image" in text
    assert "transparent" in text
    assert "ms_ssim needs images at least 161×161 px (got 120×100)" in text
    assert "note: image tinygray: L converted to RGB" in text
    df = read_table(tmp_path / "r", "per_image")
    assert set(zip(df.image_id, df.metric)) == {("good", "psnr"), ("good", "ms_ssim"), ("tinygray", "psnr")}


def test_start_errors_are_clear(kodak_dir, tmp_path):
    with pytest.raises(KeyError, match="Did you mean jpeg"):
        run(kodak_exp(kodak_dir, tmp_path / "r", codecs=["jpg"]))
    with pytest.raises(KeyError, match="Valid metrics"):
        run(kodak_exp(kodak_dir, tmp_path / "r", metrics=["psnr", "nope"]))
    with pytest.raises(FileNotFoundError, match=r"(?s)24 of 24 files missing.*kodim01.png.*BENCH_KODAK_DIR"):
        run(kodak_exp(tmp_path / "empty", tmp_path / "r"))
    with pytest.raises(ExperimentError, match="workers"):
        run(kodak_exp(kodak_dir, tmp_path / "r", workers=0))


def test_unwritable_out_dir(tmp_path, kodak_dir):
    """A path that cannot become a directory (a file is in the way): fails for root too."""
    blocker = tmp_path / "file"
    blocker.write_text("a file where the run directory should go")
    with pytest.raises(StoreError, match="cannot write to output directory"):
        run(kodak_exp(kodak_dir, blocker / "run"))


def test_wrong_pixels_are_refused(kodak_dir, tmp_path):
    data = tmp_path / "kodak"
    shutil.copytree(kodak_dir, data)
    shutil.copy(kodak_dir / "kodim02.png", data / "kodim01.png")
    res = run(kodak_exp(data, tmp_path / "r", points=[50]))
    assert any("kodim01.png: pixels differ" in p for p in res.problems)
    assert set(read_table(tmp_path / "r", "per_image").image_id) == {"kodim02"}


def test_metrics_all_runs_what_it_can_and_names_missing_weights(kodak_dir, tmp_path, monkeypatch):
    from bench import weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("BENCH_WEIGHTS", str(tmp_path / "w"))
    real_status = weights.status
    monkeypatch.setattr(weights, "status", lambda i, verify=True: "missing" if i == "inception-2015-12-05"
                        else real_status(i, verify))
    res = run(kodak_exp(kodak_dir, tmp_path / "r", points=[50], limit=1, metrics=["all"]))
    notes = "\n".join(res.problems)
    assert "left out clip_score needs captions" in notes and "left out miou needs label_map" in notes
    for name in ("lpips", "dists", "pieapp", "musiq", "fid_patch"):
        assert name in notes.split("weight file(s) needed")[0]
    for wid in ("LPIPS_v0.1_alex-df73285e.pth", "vgg16-397923af.pth", "inception-2015-12-05.pt"):
        assert wid in notes
    assert str(tmp_path / "torch" / "hub" / "pyiqa" / "LPIPS_v0.1_alex-df73285e.pth") in notes
    assert all(p.startswith("note:") for p in res.problems)
    df = read_table(tmp_path / "r", "per_image")
    assert set(df.metric) == {"psnr", "ssim", "ms_ssim", "ssim_rgb", "ms_ssim_rgb", "cw_ssim", "fsim", "gmsd", "nlpd",
                              "vsi", "mad"}


def test_explicit_metric_that_cannot_run_fails_before_work(kodak_dir, tmp_path, monkeypatch):
    from bench.weights import WeightsError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ExperimentError, match="clip_score needs captions"):
        run(kodak_exp(kodak_dir, tmp_path / "r", metrics=["psnr", "clip_score"]))
    with pytest.raises(WeightsError, match="LPIPS_v0.1_alex-df73285e.pth"):
        run(kodak_exp(kodak_dir, tmp_path / "r2", metrics=["psnr", "lpips"]))
    assert not (tmp_path / "r").exists() and not (tmp_path / "r2" / "per_image.parquet").exists()
