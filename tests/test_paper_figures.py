"""Paper figure specs (reports/) and ``bench figures``: every spec validates and names things bench
has; a real small Kodak run (2 images; JPEG, WebP, HEVC when x265 is installed; PSNR and RGB MS-SSIM)
is drawn through specs, with files, axis units and direction, dashed published curves, the exact
``bench run`` commands for missing points, and random-weight rows left out."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import KODAK

from bench import figure_specs, paper_figures

REPO = Path(__file__).resolve().parent.parent
HAVE_X265 = shutil.which("x265") is not None
METRICS = ["psnr", "ms_ssim_rgb"]


@pytest.mark.parametrize("path", figure_specs.spec_paths(), ids=lambda p: p.stem)
def test_every_spec_validates_and_names_what_bench_has(path):
    spec = figure_specs.load_spec(path)
    assert spec["id"] == path.stem
    assert figure_specs.check_names(spec, path) == []


def test_specs_cover_both_papers_evaluations():
    names = {p.stem for p in figure_specs.spec_paths()}
    perco = {f"perco-fig{n}" for n in (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)} | {"perco-table1", "perco-table2"}
    cdc = {f"cdc-fig{n}" for n in (2, 3, 4, 6, 7, 8, 9)} | {"cdc-table1"}
    assert perco | cdc <= names
    grid = figure_specs.load_spec("cdc-fig2")
    assert len(grid["panels"]) == 16 and {p["group"] for p in grid["panels"]} == {"learned-fr", "classical-fr",
                                                                                  "no-reference"}


def test_schema_errors_name_the_file_and_the_key(tmp_path):
    bad = tmp_path / "bad-fig.yaml"
    bad.write_text(yaml.safe_dump({"id": "bad-fig", "title": "t", "kind": "figure",
                                   "source": {"paper": "p", "number": "Figure 1", "where": "p. 1"},
                                   "layout": {"rows": 1, "cols": 1}, "dataset": "kodak",
                                   "codecs": {"jpeg": {"card": "jpeg", "colour": "red"}},
                                   "panels": [{"y": "psnr"}]}))
    with pytest.raises(figure_specs.SpecError, match=r"bad-fig\.yaml: key codecs\.jpeg: unknown keys \['colour'\]"):
        figure_specs.load_spec(bad)
    spec = yaml.safe_load(bad.read_text())
    spec["codecs"]["jpeg"] = {"card": "no-such-card"}
    spec["panels"] = [{"y": "no_such_metric"}]
    bad.write_text(yaml.safe_dump(spec))
    problems = figure_specs.check_names(figure_specs.load_spec(bad), bad)
    assert any("metric 'no_such_metric'" in p for p in problems)
    assert any("codecs.jpeg.card 'no-such-card'" in p and "not_in_bench" in p for p in problems)


# ------------------------------------------------------------------------------- real run
@pytest.fixture(scope="module")
def kodak_run(tmp_path_factory):
    """2 Kodak images: JPEG q10/50, WebP q10/50, HEVC (x265) QP 37/42 when installed; PSNR, RGB MS-SSIM."""
    from bench.runner import Experiment, run

    if not (KODAK / "kodim01.png").is_file():
        pytest.fail(f"shared Kodak images missing at {KODAK}", pytrace=False)
    out = tmp_path_factory.mktemp("runs") / "kodak2"
    codecs = [{"name": "jpeg", "points": [10, 50]}, {"name": "webp", "points": [10, 50]}]
    if HAVE_X265:
        codecs.append({"name": "hevc-x265", "points": [37, 42]})
    res = run(Experiment(dataset="kodak", data_dir=str(KODAK), codecs=codecs, metrics=METRICS, out=str(out), limit=2))
    assert res.units_failed == 0
    return out


def _spec(tmp_path, **over) -> Path:
    spec = {"id": "test-fig", "title": "a test figure", "kind": "figure",
            "source": {"paper": "test", "number": "Figure 1", "where": "here"},
            "layout": {"rows": 1, "cols": 2}, "x": {"metric": "bpp", "scale": "log"}, "dataset": "kodak",
            "codecs": {"jpeg": {"card": "jpeg", "label": "JPEG", "points": [10, 50, 75]},
                       "webp": {"card": "webp", "label": "WebP", "points": [10, 50]},
                       "x265": {"card": "hevc-x265", "label": "HEVC", "points": [37, 42]},
                       "sketch": {"not_in_bench": "Text-Sketch has no bench adapter yet."}},
            "references": ["kodak/compressai-jpeg", "kodak/compressai-webp"],
            "panels": [{"y": "psnr"}, {"y": "ms_ssim_rgb"}]}
    spec.update(over)
    path = tmp_path / f"{spec['id']}.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    return path


def test_a_real_run_drawn_through_a_spec(kodak_run, tmp_path):
    drawn = paper_figures.draw(figure_specs.load_spec(_spec(tmp_path)), [kodak_run.parent], tmp_path / "out")
    assert [f.name for f in drawn.files] == ["test-fig.pdf", "test-fig.svg", "test-fig.png"]
    assert all(f.stat().st_size > 1000 for f in drawn.files)
    psnr_ax, msssim_ax = drawn.figure.axes
    assert "bits per pixel (bpp)" in psnr_ax.get_xlabel() and psnr_ax.get_xscale() == "log"
    band = "\nband: 95 % interval of the mean over images"  # the run has per-image values
    assert psnr_ax.get_ylabel() == "psnr (dB), ↑ higher is better" + band
    assert msssim_ax.get_ylabel() == "ms_ssim_rgb, ↑ higher is better" + band
    lines = {line.get_label(): line for line in psnr_ax.lines}
    assert len(psnr_ax.collections) == len([lab for lab in lines if "published" not in lab])  # one band per curve
    solid = [lab for lab, line in lines.items() if line.get_linestyle() == "-"]
    assert solid == ["JPEG (n=2)", "WebP (n=2)"] + (["HEVC (n=2)"] if HAVE_X265 else [])
    # bench's curve: mean bpp and mean PSNR of the run's per_set rows, in bpp order
    rows = paper_figures.load_rows([kodak_run])
    jpeg = rows[(rows["codec"] == "jpeg") & (rows["metric"] == "psnr")].sort_values("mean_bpp")
    assert list(lines["JPEG (n=2)"].get_xdata()) == pytest.approx(list(jpeg["mean_bpp"]))
    assert list(lines["JPEG (n=2)"].get_ydata()) == pytest.approx(list(jpeg["value"]))
    # the same run given twice: rows are not counted twice
    twice = paper_figures.draw(figure_specs.load_spec(_spec(tmp_path)), [kodak_run, kodak_run])
    again = {line.get_label(): line for line in twice.figure.axes[0].lines}["JPEG (n=2)"]
    assert list(again.get_ydata()) == pytest.approx(list(jpeg["value"]))
    # published curves: dashed, labelled, from results/reference
    dashed = {lab for lab, line in lines.items() if line.get_linestyle() == "--"}
    assert dashed == {"JPEG (published: kodak/compressai-jpeg)", "WebP (published: kodak/compressai-webp)"}
    assert len(lines["JPEG (published: kodak/compressai-jpeg)"].get_xdata()) == 19  # CompressAI's q5..q95
    # the point not computed: in the notes and as the exact command
    assert "kodak: psnr ↑: JPEG [jpeg]: not computed at 75" in drawn.notes
    assert drawn.commands[0] == "bench run --dataset kodak --codec jpeg --points 75 --metrics psnr,ms_ssim_rgb"
    assert any("Text-Sketch has no bench adapter yet" in n for n in drawn.notes)
    if not HAVE_X265:
        assert "bench run --dataset kodak --codec hevc-x265 --points 37,42 --metrics psnr,ms_ssim_rgb" in drawn.commands


def test_printed_command_computes_the_missing_variant(kodak_run, tmp_path):
    """A swept card param (WebP method) drawn against it: the printed command (a derived card) runs, and
    the redrawn panel has one line per rate point across the sweep."""
    path = _spec(tmp_path, id="sweep-fig", layout={"rows": 1, "cols": 1}, x={"metric": "method"},
                 codecs={"webp": {"card": "webp", "label": "WebP", "points": [10, 50],
                                  "sweep": {"param": "method", "values": [0, 6]}}},
                 references=[], panels=[{"y": "psnr"}])
    out = tmp_path / "out"
    first = paper_figures.draw(figure_specs.load_spec(path), [kodak_run], out)
    card0, card6 = out / "cards" / "webp--method-0.yaml", out / "cards" / "webp--method-6.yaml"
    assert first.commands == [f"bench run --dataset kodak --codec {card0} --points 10,50 --metrics psnr",
                              f"bench run --dataset kodak --codec {card6} --points 10,50 --metrics psnr"]
    assert yaml.safe_load(card6.read_text())["params"]["method"] == 6
    runs = tmp_path / "runs"
    for i, command in enumerate(first.commands):
        args = shlex.split(command)[1:] + ["--limit", "1", "--out", str(runs / str(i)), "--no-plot"]
        env = {**os.environ, "BENCH_KODAK_DIR": str(KODAK), "PYTHONPATH": str(REPO)}
        subprocess.run([sys.executable, "-m", "bench", *args], check=True, env=env, capture_output=True, cwd=REPO)
    again = paper_figures.draw(figure_specs.load_spec(path), [runs], out)
    assert again.commands == []
    (ax,) = again.figure.axes
    assert ax.get_xlabel() == "method"
    assert sorted(line.get_label() for line in ax.lines) == ["WebP @ 10", "WebP @ 50"]
    assert all(list(line.get_xdata()) == [0, 6] for line in ax.lines)


def test_random_weight_rows_are_never_drawn_and_the_panel_says_why(kodak_run, tmp_path):
    rows = paper_figures.load_rows([kodak_run])
    rows.loc[rows["codec"] == "webp", "weights"] = "random"  # as a --init random smoke run labels its rows
    spec = figure_specs.load_spec(_spec(tmp_path, codecs={"webp": {"card": "webp", "label": "WebP",
                                                                   "points": [10, 50]}}, references=[]))
    drawn = paper_figures.draw(spec, rows=rows)
    for ax in drawn.figure.axes:
        assert len(ax.lines) == 0
        assert any(t.get_text() == "empty: only random-weight rows" for t in ax.texts)
    assert any("rows computed with random weights (weights=random) are not drawn" in n for n in drawn.notes)
    assert drawn.files == []  # no out_dir: nothing written


def test_a_paper_spec_kodak_panel_with_bpg(kodak_run, tmp_path):
    """CDC Fig. 9 (Kodak): BPG's published curve dashed in the PSNR panel, the BPG run as a command."""
    drawn = paper_figures.draw("cdc-fig9", [kodak_run], tmp_path / "out")
    assert (tmp_path / "out" / "cdc-fig9.png").stat().st_size > 1000
    psnr = next(ax for ax in drawn.figure.axes if ax.get_title() == "PSNR ↑")
    dashed = {line.get_label() for line in psnr.lines if line.get_linestyle() == "--"}
    assert dashed == {"BPG (published: kodak/compressai-bpg)", "HiFiC (published: kodak/hific)"}
    assert psnr.get_ylabel() == "psnr (dB), ↑ higher is better"
    bpg = [c for c in drawn.commands if " --codec bpg " in c]
    assert bpg == [("bench run --dataset kodak --codec bpg --points 47,42,37,32,27,22,17,12 --metrics "
                    "pieapp,lpips,dists,ckdn,fsim,ssim,ms_ssim,cw_ssim,psnr,gmsd,nlpd,vsi,mad,musiq,dbcnn")]


def test_cli_figures_all(kodak_run, tmp_path):
    from typer.testing import CliRunner

    from bench.cli import app

    res = CliRunner().invoke(app, ["figures", "--all", "--runs", str(kodak_run), "--out", str(tmp_path),
                                   "--format", "png"])
    assert res.exit_code == 0, res.output
    assert "perco-fig5: not drawn by bench: An image grid" in res.output
    assert "bench run --dataset coco30k --codec msillm --points vlo1,vlo2,1,2,3,4,5,6 --metrics fid,kid,lpips,ms_ssim_rgb" \
        in res.output
    drawable = [p.stem for p in figure_specs.spec_paths() if figure_specs.load_spec(p)["kind"] != "not_drawn"]
    assert sorted(p.stem for p in tmp_path.glob("*.png")) == sorted(drawable)
    assert not list(tmp_path.glob("*.pdf"))
    res = CliRunner().invoke(app, ["figures", "no-such-figure"])
    assert res.exit_code == 2 and "no figure spec named 'no-such-figure'" in res.output
    res = CliRunner().invoke(app, ["figures", "perco-fig4", "--runs", str(tmp_path / "nope")])
    assert res.exit_code == 2 and f"no such run directory: {tmp_path / 'nope'}" in res.output


def test_a_table_spec_from_the_run(kodak_run, tmp_path):
    """Table specs: one row per codec entry at the table's point, the run's means in the cells."""
    path = tmp_path / "test-table.yaml"
    path.write_text(yaml.safe_dump({
        "id": "test-table", "title": "a test table", "kind": "table",
        "source": {"paper": "test", "number": "Table 1", "where": "here"}, "dataset": "kodak", "point": 50,
        "codecs": {"jpeg": {"card": "jpeg", "label": "JPEG"}, "webp": {"card": "webp", "label": "WebP"},
                   "ldm": {"not_in_bench": "no bitstream, not a bench codec."}},
        "rows": ["jpeg", "webp", "ldm"], "columns": ["psnr", "ms_ssim_rgb"]}))
    drawn = paper_figures.draw(figure_specs.load_spec(path), [kodak_run], tmp_path / "out", formats=("png",))
    cells = drawn.figure.axes[0].tables[0].get_celld()
    text = {(r, c): cells[r, c].get_text().get_text() for r, c in cells}
    assert [text[0, c] for c in range(4)] == ["method", "bpp (kodak)", "↑psnr", "↑ms_ssim_rgb"]
    rows = paper_figures.load_rows([kodak_run])
    at = rows[(rows["codec"] == "webp") & (rows["point"] == "50")].set_index("metric")
    assert text[2, 0] == "WebP" and text[2, 1] == f"{at.loc['psnr', 'mean_bpp']:.4f}"
    assert text[2, 2] == f"{at.loc['psnr', 'value']:.4g}" and text[2, 3] == f"{at.loc['ms_ssim_rgb', 'value']:.4g}"
    assert [text[3, c] for c in range(4)] == ["ldm", "—", "not in bench", "not in bench"]
    assert drawn.commands == [] and (tmp_path / "out" / "test-table.png").is_file()


def test_estimated_rate_rows_are_their_own_dotted_line(kodak_run, tmp_path):
    """Rows at an official rate estimate (rate_kind=estimated, as CDC's adapter stores beside the real
    rate) are never joined with real-rate rows: a dotted '(estimated rate)' line of their own."""
    import pandas as pd

    rows = paper_figures.load_rows([kodak_run])
    jpeg = rows[rows["codec"] == "jpeg"]
    # the same units relabelled as an estimate at 90 % of the real rate (only the drawing is under test)
    estimated = jpeg.assign(rate_kind="estimated", mean_bpp=jpeg["mean_bpp"] * 0.9)
    spec = figure_specs.load_spec(_spec(tmp_path, codecs={"jpeg": {"card": "jpeg", "label": "JPEG",
                                                                   "points": [10, 50]}}, references=[]))
    drawn = paper_figures.draw(spec, rows=pd.concat([rows, estimated], ignore_index=True))
    lines = {line.get_label(): line for line in drawn.figure.axes[0].lines}
    assert set(lines) == {"JPEG (n=2)", "JPEG (n=2) (estimated rate)"}
    assert lines["JPEG (n=2) (estimated rate)"].get_linestyle() == ":"
    real = jpeg[jpeg["metric"] == "psnr"].sort_values("mean_bpp")
    assert list(lines["JPEG (n=2)"].get_xdata()) == pytest.approx(list(real["mean_bpp"]))
    assert drawn.commands == []


def test_a_paper_spec_leaves_a_random_weight_perco_run_out(kodak_run, tmp_path):
    """PerCo Fig. 9 (PSNR on Kodak) from a real --init random PerCo run (1 image, lowest rate) plus the
    classical run: PerCo's rows are not drawn and the panel says why; published curves still are."""
    from bench.runner import Experiment, run

    out = tmp_path / "perco-random"
    res = run(Experiment(dataset="kodak", data_dir=str(KODAK), codecs=[{"name": "perco", "points": [0.0019]}],
                         metrics=["psnr"], out=str(out), limit=1, init="random"))
    assert res.units_failed == 0
    drawn = paper_figures.draw("perco-fig9", [out, kodak_run])
    kodak = next(ax for ax in drawn.figure.axes if ax.get_title() == "Kodak: PSNR ↑")
    assert not [line for line in kodak.lines if line.get_label().startswith("PerCo")]
    assert {line.get_label() for line in kodak.lines if line.get_linestyle() == "--"} == {
        "MS-ILLM (published: kodak/msillm)", "HiFiC (lowest rate) (published: kodak/hific)",
        "VTM (published: kodak/compressai-vtm)"}
    assert ("Kodak: PSNR ↑: 1 rows computed with random weights (weights=random) are not drawn: smoke tests, "
            "not results") in drawn.notes
    assert ("bench run --dataset kodak --codec perco --points 0.0019,0.0024,0.0098,0.0313,0.0507,0.0937,0.125 "
            "--metrics psnr") in drawn.commands


def test_perco_table1_shows_the_papers_numbers_in_every_row(tmp_path):
    """PerCo Table 1: every row, in bench or not, carries the paper's numbers (results/reference);
    bench's own cells say what is missing."""
    drawn = paper_figures.draw("perco-table1", [], tmp_path, formats=("png",))
    cells = drawn.figure.axes[0].tables[0].get_celld()
    text = {(r, c): cells[r, c].get_text().get_text() for r, c in cells}
    assert text[0, 2].startswith("↓fid") and text[0, 5].startswith("↑miou")
    by_label = {text[r, 0]: [text[r, c] for c in range(1, 7)] for r in range(1, 6)}
    assert by_label["PerCo: guidance on text only"] == [
        "missing\n(paper 0.0112)", "missing\n(paper 4.42)", "missing\n(paper 0.39)", "missing\n(paper 0.58)",
        "missing\n(paper 46.64)", "missing\n(paper 29.05)"]
    assert by_label["LDM autoencoder"][0] == "—" and by_label["LDM autoencoder"][4] == "not in bench\n(paper 51.04)"
    assert by_label["Guidance: none"][1] == "missing\n(paper 7.89)"
    assert any("--codec perco" in c for c in drawn.commands) and (tmp_path / "perco-table1.png").is_file()
