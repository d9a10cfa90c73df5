"""Threads: results independent of the thread count (bitwise) in both kernel
plans and every compiled instruction-set variant; the thread policy
(num_threads, set_num_threads, OMP_NUM_THREADS, threadpoolctl); and many
Python threads calling at once."""
import os
import json
import subprocess
import threading

import numpy as np
import pytest

import gncpu
from gncpu import _config
from conftest import (SELECTED_VARIANT, VARIANTS, assert_bitwise_equal, assert_matches_oracle, make_affine, make_data,
                      oracle, python_command, run_variant, subprocess_env, tolerance)

threadpoolctl = pytest.importorskip("threadpoolctl")

# A build without OpenMP (GNCPU_NO_OPENMP=1, or a compiler without it) runs
# serially: there is no OpenMP runtime to limit or configure.
needs_openmp = pytest.mark.skipif(not _config.config()["openmp"], reason="gncpu built without OpenMP")


def kernel_plan(pairs, threads):
    """The plan gncpu/kernel/_nchw.pxi (run_nchw) picks: whole
    (sample, group) pairs per thread when they balance, else groups split into
    4096-element chunks. Used to label and check coverage of the cases below."""
    if pairs >= threads and (pairs % threads == 0 or pairs >= 8 * threads):
        return "per_group"
    return "chunked"


# (shape, groups): with 2 threads both plans, groups of one chunk, of many
# chunks, and lengths that are not multiples of the kernel's 64 lanes.
PLAN_CASES = [
    ((1, 8, 20, 20), 1),     # chunked: one group (LayerNorm-like) of 3200 < one chunk
    ((1, 32, 64, 64), 1),    # chunked: one group of 32 chunks
    ((1, 6, 83, 79), 3),     # chunked: 3 groups for 2 threads, 13114 = 3 chunks + 826
    ((5, 12, 13), 3),        # chunked: 15 pairs (odd, < 16) of 52 elements
    ((1, 6, 83, 79), 2),     # per group: 2 groups of 19671 = 4 chunks + 3287
    ((2, 32, 17, 19), 8),    # per group: 16 pairs of 1292 elements
    ((3, 6, 7, 7), 6),       # per group: 18 pairs of 49 elements
    # short channel runs (16 <= HW < 256: the flat apply of _runs.h)
    ((2, 200, 7, 7), 2),     # per group: 4900 elements, a chunk boundary inside a 49-run
    ((1, 200, 7, 7), 1),     # chunked: the same runs split across threads
    ((4, 64, 4, 4), 4),      # per group: HW = 16, the shortest flat run
    ((3, 30, 15, 17), 5),    # per group: HW = 255, the longest
    ((2, 8, 3, 5), 2),       # per group: HW = 15 < one AVX-512 vector: per-channel loops
]


def case_id(case):
    shape, groups = case
    return "x".join(map(str, shape)) + f"/{groups}-{kernel_plan(shape[0] * groups, 2)}"


def test_plan_cases_cover_both_plans():
    plans = {kernel_plan(shape[0] * groups, 2) for shape, groups in PLAN_CASES}
    assert plans == {"per_group", "chunked"}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("kind", ["normal", "offset_1e4"])
@pytest.mark.parametrize("variant", [name for name, _ in VARIANTS])
@pytest.mark.parametrize("case", PLAN_CASES, ids=case_id)
def test_variant_matches_oracle_bitwise_across_thread_counts(rng, case, variant, kind, dtype):
    """Each variant, called directly (so small inputs really run threaded),
    gives the same bits for 1, 2, 3 and 4 threads, within the oracle bound."""
    module = dict(VARIANTS)[variant]
    shape, groups = case
    x, eps = make_data(rng, shape, dtype, kind)
    weight, bias = make_affine(rng, shape[1], dtype, "normal")
    single = run_variant(module, x, groups, weight, bias, eps, threads=1)
    assert_matches_oracle(single, oracle(x, groups, weight, bias, eps), dtype, kind)
    for threads in (2, 3, 4):
        y = run_variant(module, x, groups, weight, bias, eps, threads=threads)
        assert_bitwise_equal(y, single, f"({variant}: {threads} threads vs 1, "
                                        f"{kernel_plan(shape[0] * groups, threads)} plan)")


class stream_threshold:
    """Within the block, `module` stores outputs of >= nbytes past the cache."""

    def __init__(self, module, nbytes):
        self.module, self.nbytes = module, nbytes

    def __enter__(self):
        self.previous = self.module.set_stream_threshold(self.nbytes)

    def __exit__(self, *exc):
        self.module.set_stream_threshold(self.previous)


def misaligned_empty(shape, dtype, past=None):
    """An array `past` bytes (default: one element) past a 64-byte boundary:
    the streaming stores' aligned part starts inside the first channel's run,
    or (an odd byte count) never comes."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.empty(int(np.prod(shape)) * itemsize + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + (itemsize if past is None else past)
    return raw[start:start + int(np.prod(shape)) * itemsize].view(dtype).reshape(shape)


# NHWC lines (see GroupsNHWC) of 510 and 600 lanes: streamed vectors run
# across a line's end into the padded tables.
STREAM_CASES = PLAN_CASES + [((2, 64, 64, 64), 32), ((1, 3, 127, 131), 1), ((2, 600, 5, 7), 20)]
# (dtype, activation): float32 with each kind of apply (plain, the
# intrinsics activations, ReLU's portable loop), float64 plain and fused.
STREAM_APPLIES = [(np.float32, None), (np.float32, "silu"), (np.float32, "gelu"),
                  (np.float32, "relu"), (np.float64, None), (np.float64, "silu")]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype, activation", STREAM_APPLIES,
                         ids=[f"{np.dtype(d).name}-{a}" for d, a in STREAM_APPLIES])
@pytest.mark.parametrize("variant", [name for name, _ in VARIANTS])
@pytest.mark.parametrize("case", STREAM_CASES, ids=case_id)
def test_streamed_stores_give_the_same_bits(rng, case, variant, dtype, activation, channels_last):
    """Outputs stored past the cache (non-temporal stores, used for large
    outputs) are bit-identical to ordinary stores, in both layouts, with and
    without activation, at 1 and 2 threads, into aligned and misaligned
    outputs, and every element is written."""
    module = dict(VARIANTS)[variant]
    shape, groups = case
    x, eps = make_data(rng, shape, dtype, "offset_1e4")
    if channels_last:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    weight, bias = make_affine(rng, shape[1], dtype, "normal")
    call = dict(activation=activation, channels_last=channels_last)
    with stream_threshold(module, -1):
        expected = run_variant(module, x, groups, weight, bias, eps, threads=1, **call)
    with stream_threshold(module, 0):
        for threads in (1, 2):
            for out in (np.empty_like(x), misaligned_empty(x.shape, dtype),
                        misaligned_empty(x.shape, dtype, past=1)):
                out.fill(np.nan)
                run_variant(module, x, groups, weight, bias, eps, threads=threads, out=out, **call)
                assert_bitwise_equal(out, expected, f"({variant}, streamed, {threads} threads)")


@pytest.mark.parametrize("variant", [name for name, _ in VARIANTS])
def test_streamed_stores_in_place_and_with_a_residual(rng, variant):
    module = dict(VARIANTS)[variant]
    shape, groups = (2, 64, 32, 32), 8
    x, eps = make_data(rng, shape, np.float32, "normal")
    skip = rng.standard_normal(shape).astype(np.float32)
    weight, bias = make_affine(rng, shape[1], np.float32, "normal")
    with stream_threshold(module, -1):
        expected = run_variant(module, x, groups, weight, bias, eps, threads=2)
        expected_sum = np.empty_like(x)
        expected_res = run_variant(module, x, groups, weight, bias, eps, threads=2, skip=skip,
                                   sum_out=expected_sum)
    with stream_threshold(module, 0):
        inplace = x.copy()
        run_variant(module, inplace, groups, weight, bias, eps, threads=2, out=inplace)
        assert_bitwise_equal(inplace, expected, f"({variant}, streamed, in place)")
        sum_out = np.full_like(x, np.nan)
        res = run_variant(module, x, groups, weight, bias, eps, threads=2, skip=skip,
                          sum_out=sum_out)
        assert_bitwise_equal(res, expected_res, f"({variant}, streamed, residual)")
        assert_bitwise_equal(sum_out, expected_sum, f"({variant}, streamed, residual sum)")


def test_stream_threshold_is_validated_and_defaults_to_half_the_cache():
    module = dict(VARIANTS)[SELECTED_VARIANT]
    assert module.stream_threshold() == module.last_level_cache_bytes() // 2
    with pytest.raises(ValueError, match="nbytes=-2"):
        module.set_stream_threshold(-2)
    assert module.stream_threshold() == module.last_level_cache_bytes() // 2


@pytest.mark.parametrize("kind", ["normal", "offset_1e4"])
@pytest.mark.parametrize("case", PLAN_CASES, ids=case_id)
def test_variants_agree_within_the_oracle_bound(rng, case, kind):
    """Variants may differ by FMA contraction only: far below the bound."""
    shape, groups = case
    x, eps = make_data(rng, shape, np.float32, kind)
    weight, bias = make_affine(rng, shape[1], np.float32, "normal")
    results = {name: run_variant(module, x, groups, weight, bias, eps, threads=2)
               for name, module in VARIANTS}
    first_name, first = next(iter(results.items()))
    for name, y in results.items():
        diff = float(np.abs(y.astype(np.float64) - first).max())
        assert diff <= tolerance(np.float32, kind), f"{name} vs {first_name}: max |diff| {diff:.2e}"


def test_best_variant_is_selected():
    """The best variant runs, unless GNCPU_KERNEL forces one."""
    names = [name for name, _ in VARIANTS]
    assert names[0] == "baseline"
    assert gncpu.kernel.kernels is dict(VARIANTS)[SELECTED_VARIANT]
    assert gncpu.kernel.kernels.build_info()["variant"] == SELECTED_VARIANT


# Inputs large enough that the public API really runs 2+ threads.
API_CASES = [((1, 32, 64, 64), 1), ((1, 6, 83, 79), 3), ((1, 6, 83, 79), 2), ((4, 32, 16, 16), 32)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", API_CASES, ids=case_id)
def test_public_api_bitwise_across_thread_counts(rng, case, dtype):
    shape, groups = case
    assert _config.resolve_threads(3, int(np.prod(shape))) >= 2
    x, eps = make_data(rng, shape, dtype)
    weight, bias = make_affine(rng, shape[1], dtype, "normal")
    single = gncpu.group_norm(x, groups, weight, bias, num_threads=1)
    for threads in (2, 3, None, -1):
        assert_bitwise_equal(gncpu.group_norm(x, groups, weight, bias, num_threads=threads), single,
                             f"(num_threads={threads} vs 1)")


# --------------------------------------------------------------------------- thread policy


def test_thread_count_is_capped_by_the_work():
    """Each thread gets at least MIN_ELEMENTS_PER_THREAD elements: small
    inputs run on one thread, medium ones on a few."""
    per_thread = _config.MIN_ELEMENTS_PER_THREAD
    assert _config.resolve_threads(4, 2 * per_thread - 1) == 1
    assert _config.resolve_threads(None, 2 * per_thread - 1) == 1
    assert _config.resolve_threads(4, 0) == 1
    assert _config.resolve_threads(4, 2 * per_thread) == 2
    assert _config.resolve_threads(4, 3 * per_thread + 5) == 3
    assert _config.resolve_threads(4, 100 * per_thread) == 4
    assert _config.resolve_threads(None, 100 * per_thread) == min(gncpu.get_num_threads(), 100)
    assert _config.resolve_threads(-1, 100 * per_thread) == gncpu.kernel.kernels.max_threads()


def test_set_num_threads(restore_threads):
    default = gncpu.get_num_threads()
    assert default == gncpu.kernel.kernels.max_threads()
    gncpu.set_num_threads(1)
    assert gncpu.get_num_threads() == 1
    assert _config.resolve_threads(None, 10**6) == 1
    gncpu.set_num_threads(3)
    assert gncpu.get_num_threads() == 3
    gncpu.set_num_threads(-1)
    assert gncpu.get_num_threads() == gncpu.kernel.kernels.max_threads()
    gncpu.set_num_threads(None)
    assert gncpu.get_num_threads() == default


@needs_openmp
def test_threadpoolctl_limit_is_honoured(rng):
    openmp = [info for info in threadpoolctl.threadpool_info() if info["user_api"] == "openmp"]
    assert openmp, "threadpoolctl does not see the OpenMP runtime gncpu uses"
    x, _ = make_data(rng, (1, 32, 64, 64), np.float32)
    single = gncpu.group_norm(x, 1, num_threads=1)
    default = gncpu.get_num_threads()
    with threadpoolctl.threadpool_limits(1, "openmp"):
        assert gncpu.get_num_threads() == 1
        assert _config.resolve_threads(None, x.size) == 1
        assert_bitwise_equal(gncpu.group_norm(x, 1), single)
    assert gncpu.get_num_threads() == default


def test_explicit_set_num_threads_wins_over_threadpoolctl(restore_threads):
    gncpu.set_num_threads(2)
    with threadpoolctl.threadpool_limits(1, "openmp"):
        assert gncpu.get_num_threads() == 2


_CHILD = """
import json, sys
import numpy as np
import gncpu
x = np.random.default_rng(3).standard_normal((1, 32, 64, 64)).astype(np.float32)
np.save(sys.argv[1], gncpu.group_norm(x, 1))
print(json.dumps({"threads": gncpu.get_num_threads(), "env": gncpu._config.config()["OMP_NUM_THREADS"]}))
"""


@needs_openmp
@pytest.mark.parametrize("omp", ["1", "3"])
def test_omp_num_threads_is_honoured(tmp_path, omp):
    result_file = tmp_path / "y.npy"
    run = subprocess.run(python_command("-c", _CHILD, str(result_file)), capture_output=True,
                         text=True, env=subprocess_env(OMP_NUM_THREADS=omp), timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report == {"threads": int(omp), "env": omp}
    x = np.random.default_rng(3).standard_normal((1, 32, 64, 64)).astype(np.float32)
    assert_bitwise_equal(np.load(result_file), gncpu.group_norm(x, 1, num_threads=1))


# --------------------------------------------------------------------------- Python threads


def test_eight_python_threads_concurrently(rng):
    """8 threads call at once (each call may itself run OpenMP threads),
    through every path, each with its own out buffers, and a shared
    GroupNorm: every result is bitwise the serial one."""
    module = gncpu.GroupNorm(4, 32)
    module.weight = rng.standard_normal(32).astype(np.float32)
    module.bias = rng.standard_normal(32).astype(np.float32)
    tasks = []
    for i, (shape, groups, dtype) in enumerate([
        ((1, 32, 64, 64), 1, np.float32), ((1, 6, 83, 79), 3, np.float64), ((2, 8, 9, 7), 4, np.float32),
        ((4, 32, 16, 16), 32, np.float16), ((3, 12, 5), 3, np.float64), ((1, 32, 40, 40), 4, np.float32),
    ]):
        x, _ = make_data(rng, shape, dtype, "offset_1e4" if dtype != np.float16 else "normal")
        weight, bias = make_affine(rng, shape[1], dtype, "normal")
        threads = (i % 2) + 1
        expected = gncpu.group_norm(x, groups, weight, bias, num_threads=threads)
        tasks.append((x, groups, weight, bias, threads, expected))
    x_module, _ = make_data(rng, (2, 32, 24, 24), np.float32)
    expected_module = module(x_module)

    start = threading.Barrier(8)
    failures = []

    def worker(index):
        try:
            outs = [np.empty_like(t[0]) for t in tasks]
            start.wait()
            for rep in range(12):
                for k, (x, groups, weight, bias, threads, expected) in enumerate(tasks):
                    if (rep + index + k) % 2:
                        y = gncpu.group_norm(x, groups, weight, bias, out=outs[k], num_threads=threads)
                    else:
                        y = gncpu.group_norm(x, groups, weight, bias, num_threads=threads)
                    if not np.array_equal(y, expected, equal_nan=True):
                        failures.append(f"thread {index}, rep {rep}, task {k}: wrong result")
                if not np.array_equal(module(x_module), expected_module):
                    failures.append(f"thread {index}, rep {rep}: GroupNorm wrong result")
        except Exception as exc:  # surfaced below with the thread's index
            failures.append(f"thread {index}: {type(exc).__name__}: {exc}")

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in pool), "a worker thread hung"
    assert not failures, "\n".join(failures[:10])


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("nbytes", [0, 1, 65535, 65536, 65537, 3 * 65536 + 17])
def test_parallel_copy(rng, nbytes, threads):
    """The benchmarks' memory floor copies every byte, whatever the split."""
    src = rng.integers(0, 256, nbytes, dtype=np.uint8)
    dst = np.zeros_like(src)
    for _, module in VARIANTS:
        dst[...] = 0
        assert module.parallel_copy(src, dst, threads) is dst
        assert np.array_equal(dst, src)


_SPIN_PROBE = """
import os, subprocess, sys
import gncpu
from gncpu._config import config
print(config()["omp_idle_spin"])
print(os.environ.get("GOMP_SPINCOUNT"))
print(subprocess.run([sys.executable, "-P", "-c", "import os; print(os.environ.get('GOMP_SPINCOUNT'))"],
                     capture_output=True, text=True).stdout.strip())
"""


@pytest.mark.parametrize("env, expected", [
    ({}, "GOMP_SPINCOUNT=10000 (set by gncpu at load"),
    ({"OMP_WAIT_POLICY": "passive"}, "OMP_WAIT_POLICY=passive (the user's)"),
    ({"GOMP_SPINCOUNT": "123"}, "GOMP_SPINCOUNT=123 (the user's)"),
])
def test_libgomp_idle_spin_is_cut_at_load_unless_the_user_chose(env, expected):
    """gncpu loads libgomp with a short idle spin (its default keeps a core busy ~9 ms
    after each call), unless the user set a wait policy; the variable is set only
    around the load, so neither this process's environment nor a child keeps it."""
    child_env = subprocess_env(**{"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None, **env})
    out = subprocess.run(python_command("-c", _SPIN_PROBE), env=child_env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    setting, in_process, in_child = out.stdout.strip().splitlines()
    assert setting.startswith(expected)
    left = env.get("GOMP_SPINCOUNT", "None")
    assert in_process == left and in_child == left
