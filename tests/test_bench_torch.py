"""bench/bench_torch.py's helpers (the full run takes minutes: not here)."""
import importlib.util
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from conftest import REPO_ROOT  # noqa: E402


@pytest.fixture(scope="module")
def bench():
    path = os.path.join(REPO_ROOT, "bench", "bench_torch.py")
    spec = importlib.util.spec_from_file_location("bench_torch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_interleaved_rotates_the_order(bench):
    order = []
    fns = {name: (lambda name=name: order.append(name)) for name in "abc"}
    times = bench.interleaved(fns, (), rounds=3)
    assert order == list("abc" "bca" "cab")
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_ratio_is_median_of_per_round_ratios(bench):
    times = {"x": [2.0, 9.0, 3.0], "base": [1.0, 3.0, 1.0]}
    assert bench.ratio_to(times, "x", "base") == 3.0


@pytest.mark.parametrize("name, counted", [
    ("aten::native_group_norm", True), ("aten::silu", True), ("gncpu::group_norm", True),
    ("graph_0_cpp_fused_convolution_native_group_norm_silu_1", True),
    ("aten::convolution", False), ("graph_0_cpp_fused_add_div_2", False)])
def test_gn_silu_events(bench, name, counted):
    assert bench.is_gn_or_silu(name) is counted


def test_op_table_runs(bench):
    lines = bench.bench_op(["1x64x8x8"], rounds=2)
    assert lines[-1].startswith("| 1x64x8x8/32 | bfloat16 |") and len(lines) == 6


def test_gn_silu_share_of_eager_group_norm(bench):
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3), torch.nn.GroupNorm(2, 8), torch.nn.SiLU())
    with torch.inference_mode():
        share = bench.gn_silu_share(model, (torch.randn(1, 8, 16, 16),))
    assert 0.0 < share < 1.0
