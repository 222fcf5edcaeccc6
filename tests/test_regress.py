"""bench regress: a synthetic run (parquet written here) against golden CSVs: pass, regressions,
new rows, per-point goldens over other images, stochastic seed means, --update; and the shared
comparison that bench.golden.compare now uses."""
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from bench import golden, regress
from bench.cli import app


def _run(tmp_path, seeds=(0,), noise=0.0, shift=0.0, name="run"):
    rng = np.random.default_rng([7, *map(ord, name)])  # another run name, another noise draw
    rows = []
    for codec, points in {"jpeg": ["10", "50"], "webp": ["10", "50"]}.items():
        for p in points:
            for i in range(3):
                bits = 1000 * (int(p) + i) + (codec == "webp")
                for s in seeds:
                    for metric, base in (("psnr", 25 + int(p) / 10 + i), ("lpips", 0.3 - int(p) / 1000)):
                        rows.append({"run_id": "r", "dataset": "kodak", "image_id": f"kodim0{i + 1}", "codec": codec,
                                     "point": p,
                                         "seed": s, "bits": bits, "bpp": bits / 393216, "metric": metric,
                                         "value": base + shift + rng.normal(0, noise), "weights": "none"})
    out = tmp_path / name
    out.mkdir()
    pd.DataFrame(rows).to_parquet(out / "per_image.parquet")
    return out


def _invoke(*args):
    return CliRunner().invoke(app, ["regress", *map(str, args)])


def test_identical_run_passes_and_shift_fails(tmp_path):
    run = _run(tmp_path)
    gold = tmp_path / "g" / "kodak_per_image.csv"
    assert _invoke(run, "--golden", gold, "--update").exit_code == 0
    ok = _invoke(run, "--golden", gold)
    assert ok.exit_code == 0 and "0 beyond tolerance" in ok.output
    moved = _run(tmp_path, shift=0.01, name="moved")  # 0.01 dB on every value: beyond rel 1e-4 for lpips/psnr
    bad = _invoke(moved, "--golden", gold)
    assert bad.exit_code == 1 and "REGRESSION" in bad.output
    report = regress.compare(moved, gold)
    assert {d.quantity for _, d in report.failures} == {"value"}
    # a looser tolerance for these metrics accepts it
    assert _invoke(moved, "--golden", gold, "--tolerance", "psnr=abs:0.02",
                   "--tolerance", "lpips=abs:0.02").exit_code == 0


def test_bits_are_exact_and_new_rows_fail(tmp_path):
    run = _run(tmp_path)
    gold = tmp_path / "kodak_per_image.csv"
    regress.update(run, gold)
    g = pd.read_csv(gold, dtype={"point": str})
    g.loc[0, "bits"] += 8
    g.to_csv(gold, index=False)
    report = regress.compare(run, gold)
    assert [d.quantity for _, d in report.failures] == ["bits"]
    g.loc[0, "bits"] -= 8
    g[g.codec == "jpeg"].to_csv(gold, index=False)  # webp rows are now new to the golden
    assert regress.compare(run, gold).failures
    assert not regress.compare(run, gold, allow_new=True).failures


def test_per_point_golden_over_other_images_is_not_compared(tmp_path):
    run = _run(tmp_path)
    gold = tmp_path / "kodak_per_point.csv"
    regress.update(run, gold)
    assert regress.compare(run, gold).compared == 16 and not regress.compare(run, gold).failures
    g = pd.read_csv(gold, dtype={"point": str})
    g["n_images"] = 24
    g.to_csv(gold, index=False)
    report = regress.compare(run, gold)
    assert report.compared == 0 and any("not compared with the per-point golden" in n for n in report.notes)
    assert _invoke(run, "--golden", gold).exit_code == 1  # nothing compared is not a pass
    with pytest.raises(regress.RegressError, match="run all of them"):
        regress.update(run, gold)


def test_stochastic_seed_means_with_spread_tolerance(tmp_path, monkeypatch):
    gold = tmp_path / "kodak_per_image.csv"
    regress.update(_run(tmp_path, seeds=range(8), noise=0.05, name="a"), gold)
    assert "seed_sd" in pd.read_csv(gold).columns
    other_draw = _run(tmp_path, seeds=range(8, 16), noise=0.05, name="b")
    # the same codec with other decoder seeds: seed means differ by noise, within 3 SE of a difference
    rows = regress.run_rows(other_draw)
    assert (rows.n_seeds == 8).all()
    assert not regress.compare(other_draw, gold).failures
    monkeypatch.setattr(regress, "SEED_SIGMAS", 0.0)  # without the seed-spread tolerance it would fail
    assert regress.compare(other_draw, gold).failures
    monkeypatch.undo()
    assert regress.compare(_run(tmp_path, seeds=range(8, 16), noise=0.05, shift=0.2, name="c"), gold).failures


def test_update_keeps_other_rows_text(tmp_path):
    gold = tmp_path / "kodak_per_image.csv"
    regress.update(_run(tmp_path), gold)
    lines = gold.read_text().splitlines()
    psnr_only = _run(tmp_path, shift=1.0, name="shifted")
    df = pd.read_parquet(psnr_only / "per_image.parquet")
    df[(df.metric == "psnr") & (df.codec == "jpeg")].to_parquet(psnr_only / "per_image.parquet")
    regress.update(psnr_only, gold)
    after = gold.read_text().splitlines()
    changed = [a for a, b in zip(lines, after) if a != b]
    assert len(after) == len(lines) and len(changed) == 6 and all(",jpeg," in c and "psnr" in c for c in changed)


def test_golden_compare_uses_shared_diff():
    g = golden.load()
    assert golden.compare(g) == []
    moved = g.head(20).copy()
    moved.loc[moved.index[:2], "value"] += 0.01
    moved.loc[moved.index[3], "bits"] -= 8
    problems = golden.compare(moved)
    assert len(problems) == 3 and "bits, golden" in problems[2]


def test_classical_experiment_file_matches_the_golden_experiment():
    from bench.runner import Experiment

    exp = Experiment.from_yaml(golden.GOLDEN_DIR / "kodak_classical.yaml")
    assert {c["name"]: c["points"] for c in exp.codecs} == golden.CODEC_POINTS
    assert exp.metrics == golden.METRICS and exp.dataset == "kodak"
