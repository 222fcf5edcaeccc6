"""The Ray executor: same tables and resume keys as the local one, and a worker lost mid-unit
(a codec that SIGKILLs its own process once) retried elsewhere and recorded once.

One local Ray instance (2 CPUs, no dashboard, no network) serves the whole module. Its
workers see the test plugin below through PYTHONPATH, as a cluster's nodes would see an
installed plugin."""
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench import registry
from bench.runner import Experiment, ExperimentError, run
from bench.store import read_table

REPO = Path(__file__).resolve().parent.parent

# A JPEG adapter whose encoder kills its own process the first time (marker file absent).
KILLER = '''
import os
import signal
from pathlib import Path

from bench.codecs.classical import PillowJPEG


class KillerJPEG(PillowJPEG):
    name = "killer-jpeg"

    def __init__(self, device="cpu", marker="", **params):
        super().__init__(device, **params)
        self.marker = Path(marker)

    def encode(self, rgb, point, seed=0):
        if not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().encode(rgb, point, seed)


class WhereSetMetric:
    """A set metric: mean reconstruction intensity; each call leaves its process id in
    <cache_dir>/pids (which process computed it)."""

    name = "where_mean"
    kind = "per_set"
    higher_better = True

    @staticmethod
    def available():
        return True, ""

    @staticmethod
    def version():
        return "where-mean-1"

    @staticmethod
    def compute_set(pairs, device="cpu", cache_dir=None):
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(cache_dir) / "pids", "a") as f:
            f.write(f"{os.getpid()}\\n")
        return {"value": float(sum(recon.mean() for _, recon in pairs) / len(pairs)), "n_images": len(pairs)}
'''


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local Ray instance whose workers can import the killer plugin; yields the plugin folder."""
    import ray  # pinned in requirements.lock: CI runs these tests, never skips them
    site = tmp_path_factory.mktemp("plugin")
    (site / "bench_killer.py").write_text(KILLER)
    dist = site / "bench_killer-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bench-killer\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[bench.codecs]\nkiller-jpeg = bench_killer:KillerJPEG\n"
                                           "[bench.metrics]\nwhere_mean = bench_killer:WhereSetMetric\n")
    sys.path.insert(0, str(site))
    from bench_killer import KillerJPEG, WhereSetMetric

    registry.add("codec", "killer-jpeg", KillerJPEG, source="plugin:bench-killer")
    registry.add("metric", "where_mean", WhereSetMetric(), source="plugin:bench-killer")
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env})
    yield site
    ray.shutdown()
    sys.path.remove(str(site))
    registry._entries["metric"].pop("where_mean", None)  # other tests see the built-in metrics only


def exp(kodak_dir, out, **kw):
    base = dict(dataset="kodak", data_dir=str(kodak_dir), codecs=["jpeg"], points=[10, 50], metrics=["psnr", "gmsd"],
                out=str(out), limit=2)
    return Experiment(**{**base, **kw})


TIMING = ["run_id", "enc_s", "dec_s"]


def same_tables(a: Path, b: Path) -> None:
    for name in ("per_image", "per_set"):
        x, y = read_table(a, name), read_table(b, name)
        drop = [c for c in TIMING if c in x.columns]
        assert len(x) > 0
        pd.testing.assert_frame_equal(x.drop(columns=drop), y.drop(columns=drop))


def unit_keys(out: Path) -> list[str]:
    with sqlite3.connect(out / "ledger.sqlite") as db:
        return [r[0] for r in db.execute("SELECT unit_key FROM units ORDER BY unit_key")]


def test_ray_gives_the_local_tables_and_resume_keys(ray_cluster, kodak_dir, tmp_path):
    path = tmp_path / "experiment.yaml"  # one experiment file, run both ways
    path.write_text(f"dataset: kodak\ndata_dir: {kodak_dir}\ncodecs: [jpeg]\npoints: [10, 50]\n"
                    "metrics: [psnr, gmsd]\nlimit: 2\n")
    local = run(Experiment.from_yaml(path, out=str(tmp_path / "local")))
    on_ray = run(Experiment.from_yaml(path, out=str(tmp_path / "ray"), executor="ray"))
    assert local.units_coded == on_ray.units_coded == 4 and not on_ray.problems
    assert on_ray.metric_values == local.metric_values == 8
    same_tables(tmp_path / "local", tmp_path / "ray")
    assert unit_keys(tmp_path / "local") == unit_keys(tmp_path / "ray")
    # a run directory started locally resumes on Ray (and the other way): same keys, nothing redone
    again = run(exp(kodak_dir, tmp_path / "local", executor="ray", points=[10, 30, 50]))
    assert again.units_skipped == 4 and again.units_coded == 2
    back = run(exp(kodak_dir, tmp_path / "local", points=[10, 30, 50]))
    assert back.units_skipped == 6 and back.units_coded == 0


def test_worker_killed_mid_unit_is_retried_and_recorded_once(ray_cluster, kodak_dir, tmp_path):
    marker = tmp_path / "killed-once"
    card = tmp_path / "killer.yaml"
    card.write_text(f"name: killer\nadapter: killer-jpeg\nparams: {{marker: {str(marker)!r}}}\npoints: [10, 50]\n")
    res = run(exp(kodak_dir, tmp_path / "ray", codecs=[str(card)], executor="ray"))
    assert marker.is_file() and int(marker.read_text()) != os.getpid()  # a Ray worker died, not this process
    assert res.units_coded == 4 and res.units_failed == 0 and not res.problems
    keys = unit_keys(tmp_path / "ray")
    assert len(keys) == len(set(keys)) == 4
    df = read_table(tmp_path / "ray", "per_image")
    assert len(df) == 8 and not df.duplicated(["image_id", "codec", "point", "seed", "metric"]).any()
    # the same card locally (the marker now exists: no kill) gives the same tables
    run(exp(kodak_dir, tmp_path / "local", codecs=[str(card)]))
    same_tables(tmp_path / "local", tmp_path / "ray")


def test_a_worker_that_cannot_see_the_run_directory_says_so(tmp_path):
    from bench.executors import ray_units
    from bench.runner import CodecSettings

    with pytest.raises(ExperimentError, match=r"run directory .*missing is not visible on node .* --out must be on "
                                              r"a filesystem every node mounts"):
        ray_units([], CodecSettings(), str(tmp_path / "missing"))


def test_address_needs_ray_and_executor_is_checked(kodak_dir, tmp_path):
    with pytest.raises(ExperimentError, match="--address .* --executor ray"):
        run(exp(kodak_dir, tmp_path / "r", address="auto"))
    with pytest.raises(ExperimentError, match="--executor must be local or ray"):
        run(exp(kodak_dir, tmp_path / "r", executor="dask"))


def test_the_local_path_never_imports_ray(kodak_dir, tmp_path):
    code = ("import sys; from bench.runner import Experiment, run; "
            f"run(Experiment(dataset='kodak', data_dir={str(kodak_dir)!r}, codecs=['jpeg'], points=[10], "
            f"metrics=['psnr'], limit=1, out={str(tmp_path / 'r')!r})); "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_set_metrics_run_as_ray_tasks_with_the_local_values(ray_cluster, kodak_dir, tmp_path):
    """Each (codec point, set metric) is a Ray task on a worker; the driver stores the results:
    the per_set rows equal a local run's, and no set result is computed in the driver."""
    metrics = ["psnr", "where_mean"]
    run(exp(kodak_dir, tmp_path / "local", metrics=metrics))
    res = run(exp(kodak_dir, tmp_path / "ray", metrics=metrics, executor="ray"))
    assert not res.problems
    same_tables(tmp_path / "local", tmp_path / "ray")
    rows = read_table(tmp_path / "ray", "per_set")
    assert len(rows[rows.metric == "where_mean"]) == 2  # one per point
    pids = (tmp_path / "ray" / "cache" / "pids").read_text().split()
    assert len(pids) == 2 and str(os.getpid()) not in pids  # computed by Ray workers, not the driver
    local_pids = (tmp_path / "local" / "cache" / "pids").read_text().split()
    assert local_pids == [str(os.getpid())] * 2
