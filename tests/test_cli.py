"""The command line as a user types it."""
import pytest
from typer.testing import CliRunner

from bench.cli import app

runner = CliRunner()


def test_lists_show_what_is_registered_and_available():
    out = runner.invoke(app, ["codecs", "list"])
    assert out.exit_code == 0 and "jpeg-444" in out.stdout and "pillow-jpeg" in out.stdout
    out = runner.invoke(app, ["metrics", "list"])
    assert out.exit_code == 0 and "ms_ssim" in out.stdout and "PolyForm Noncommercial" in out.stdout
    assert "higher" in out.stdout and "lower" in out.stdout
    out = runner.invoke(app, ["datasets", "list"])
    assert out.exit_code == 0 and "samples" in out.stdout and "kodak" in out.stdout


def test_datasets_check(kodak_dir, tmp_path):
    out = runner.invoke(app, ["datasets", "check", "kodak", "--data-dir", str(kodak_dir)])
    assert out.exit_code == 0 and "24 of 24 images OK" in out.stdout
    out = runner.invoke(app, ["datasets", "check", "kodak", "--data-dir", str(tmp_path)])
    assert out.exit_code == 1 and "kodim01.png" in out.output


def test_run_plot_and_summary(kodak_dir, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", "--dataset", "kodak", "--data-dir", str(kodak_dir), "--codec", "jpeg",
                              "--points", "10,50,90", "--metrics", "psnr,ms_ssim", "--out", str(out), "--limit", "1"])
    assert res.exit_code == 0, res.output
    assert "ms_ssim" in res.stdout and "3 units coded" in res.stdout
    for metric in ("psnr", "ms_ssim"):
        for fmt in ("png", "svg"):
            assert (out / "plots" / f"{metric}.{fmt}").stat().st_size > 1000
    assert runner.invoke(app, ["summary", str(out)]).exit_code == 0
    res = runner.invoke(app, ["plot", str(out), "--out", str(tmp_path / "p")])
    assert res.exit_code == 0 and (tmp_path / "p" / "psnr.svg").exists()


def test_experiment_yaml(kodak_dir, tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"dataset: kodak\ndata_dir: {kodak_dir}\ncodecs: [{{name: webp, points: [20]}}]\n"
                   f"metrics: [psnr]\nout: {tmp_path / 'r'}\nlimit: 1\n")
    res = runner.invoke(app, ["run", str(exp), "--no-plot"])
    assert res.exit_code == 0, res.output
    assert "webp" in res.stdout and "1 units coded" in res.stdout
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
