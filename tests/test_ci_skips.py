"""The CI skip policy of conftest.py, run on throwaway test files with pytester."""
from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

TESTS = """
import pytest

def test_runs():
    assert True

def test_unmarked_skip_in_body():
    pytest.skip("data folder not found")

@pytest.mark.skipif(True, reason="tool missing")
def test_unmarked_skipif():
    pass

@pytest.mark.needs_mmcv
@pytest.mark.skipif(True, reason="mmcv.ops does not import")
def test_marked_skip():
    pass

@pytest.mark.needs_weights
def test_bare_needs_weights_skips_itself():
    pytest.skip("checkpoint not in TORCH_HOME")

@pytest.mark.xfail(reason="known bug", strict=True)
def test_xfail_is_not_a_skip():
    assert False
"""


@pytest.fixture
def project(pytester):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makeini("[pytest]\nmarkers =\n    needs_gpu: x\n    needs_weights: x\n    needs_mmcv: x\n")
    pytester.makepyfile(test_policy=TESTS)
    return pytester


def run(pytester, monkeypatch, ci: bool, *args):
    if ci:
        monkeypatch.setenv("BENCH_CI", "1")
    else:
        monkeypatch.delenv("BENCH_CI", raising=False)
    # importlib mode: the copied conftest must not clash with this suite's own ``conftest`` module
    return pytester.runpytest("-p", "no:cacheprovider", "--import-mode=importlib", *args)


def test_without_ci_skips_are_listed_but_pass(project, monkeypatch):
    res = run(project, monkeypatch, False)
    res.assert_outcomes(passed=1, skipped=4, xfailed=1)
    assert res.ret == 0
    out = res.stdout.str()
    assert "skipped (allowed on CI): 2" in out
    assert "skipped (NOT allowed on CI: would fail with BENCH_CI=1): 2" in out
    res.stdout.fnmatch_lines([
        "*test_policy.py::test_marked_skip  [[]needs_mmcv[]]  mmcv.ops does not import",
        "*test_policy.py::test_bare_needs_weights_skips_itself  [[]needs_weights[]]  checkpoint not in TORCH_HOME",
    ])
    res.stdout.fnmatch_lines(["*test_unmarked_skip_in_body  [[]no allowed-skip marker*]  data folder not found"])


def test_ci_turns_unmarked_skips_into_failures(project, monkeypatch):
    res = run(project, monkeypatch, True)
    # a skip in the body fails the test; a skipif (decided at setup) errors it; both exit non-zero
    res.assert_outcomes(passed=1, skipped=2, failed=1, errors=1, xfailed=1)
    assert res.ret == pytest.ExitCode.TESTS_FAILED
    out = res.stdout.str()
    assert "skipped (NOT allowed on CI) → failure: 2" in out and "skipped (allowed on CI): 2" in out
    assert "skipped on CI (BENCH_CI=1), which is not allowed" in out and "skip reason: tool missing" in out
    res.stdout.fnmatch_lines(["*FAILED test_policy.py::test_unmarked_skip_in_body*",
                              "*ERROR test_policy.py::test_unmarked_skipif*"], consecutive=False)


def test_ci_passes_when_only_marked_tests_skip(project, monkeypatch):
    res = run(project, monkeypatch, True, "-k", "test_runs or test_marked_skip or bare or xfail")
    res.assert_outcomes(passed=1, skipped=2, xfailed=1)
    assert res.ret == 0


def test_marker_skips_by_itself_and_only_when_the_resource_is_missing(pytester, monkeypatch, cache):
    import torch  # imported before the inline run: pytester unloads what the inner session imports

    from bench import weights

    present = weights.path("torchvision-alexnet")  # under the empty TORCH_HOME of ``cache``
    present.parent.mkdir(parents=True)
    present.write_bytes(b"stand-in")
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_auto="""
        import pytest

        @pytest.mark.needs_gpu
        def test_gpu():
            import torch
            assert torch.cuda.is_available()

        @pytest.mark.needs_weights("lpips-alex-v0.1")
        def test_absent_weights():
            raise AssertionError("must not run without its weight file")

        @pytest.mark.needs_weights("torchvision-alexnet")
        def test_present_weights_but_skipped():
            pytest.skip("some other reason")
    """)
    res = run(pytester, monkeypatch, True)
    gpu = torch.cuda.is_available()
    res.assert_outcomes(passed=int(gpu), skipped=2 - int(gpu), failed=1)
    if not gpu:  # skipped by the marker alone, with the standard reason
        res.stdout.fnmatch_lines(["*test_auto.py::test_gpu  [[]needs_gpu[]]  needs_gpu: no CUDA device"])
    res.stdout.fnmatch_lines(["*test_absent_weights  [[]needs_weights[]]  needs_weights: *lpips-alex-v0.1*"
                              "bench weights fetch lpips-alex-v0.1*"])
    # marked, but its file is here: the skip has another cause and must not pass on CI
    res.stdout.fnmatch_lines(["*FAILED test_auto.py::test_present_weights_but_skipped*"])
    res.stdout.fnmatch_lines(["*test_present_weights_but_skipped  [[]marked needs_weights, but that is present here*"])


def test_module_skipped_at_collection_fails_ci(pytester, monkeypatch):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_mod="""
        import pytest
        pytest.importorskip("no_such_module_for_bench")

        def test_never():
            pass
    """, test_ok="def test_ok():\n    pass\n")
    res = run(pytester, monkeypatch, True)
    res.assert_outcomes(passed=1, skipped=1)
    assert res.ret == pytest.ExitCode.TESTS_FAILED
    res.stdout.fnmatch_lines(["*skipped (NOT allowed on CI) → failure: 1*",
                              "*test_mod.py  [[]a whole module skipped at collection[]]*no_such_module_for_bench*"])
    assert run(pytester, monkeypatch, False).ret == 0
