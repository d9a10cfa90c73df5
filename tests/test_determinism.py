"""The embedded engine's determinism guarantee: the same feeds give the same
bytes for every thread count and under concurrent run() calls on one session
(convolutions and matmuls split in blocks fixed by the shape, BLAS held to one
thread during runs); and a soak of 8 threads x 100 runs that leaks nothing."""
import os
import subprocess
import threading

import numpy as np
import pytest

pytest.importorskip("onnx")
psutil = pytest.importorskip("psutil")

from gncpu.onnx import InferenceSession  # noqa: E402
from gncpu.kernel import LEVELS, _baseline  # noqa: E402
from conftest import assert_bitwise_equal, python_command, subprocess_env  # noqa: E402
from service_models import VAE_DECODER, conv_gn_silu_model, feeds_for  # noqa: E402

THREAD_COUNTS = (1, 2, 3, 8)


def run_in_threads(session, feeds, threads, runs_each):
    """Every output of `runs_each` runs in each of `threads` Python threads."""
    barrier = threading.Barrier(threads)
    outputs, errors = [], []

    def worker():
        try:
            barrier.wait()  # all threads in run() together
            for _ in range(runs_each):
                outputs.append(session.run(None, feeds)[0])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in workers), "a run() did not return"
    assert not errors, errors
    assert len(outputs) == threads * runs_each
    return outputs


@pytest.mark.parametrize("model", [VAE_DECODER, conv_gn_silu_model()], ids=["sd_vae_decoder", "conv_gn_silu"])
def test_outputs_are_identical_for_every_thread_count(model):
    # The embedded engine's promise; onnxruntime's regions may change with the thread count.
    sessions = {n: InferenceSession(model, num_threads=n, engine="gncpu") for n in THREAD_COUNTS}
    feeds = feeds_for(sessions[1])
    expected = sessions[1].run(None, feeds)
    for n, session in sessions.items():
        for got, want in zip(session.run(None, feeds), expected):
            assert_bitwise_equal(got, want, f"(num_threads={n} vs 1)")


@pytest.mark.parametrize("num_threads", [1, 2])
def test_concurrent_runs_on_one_session_are_identical(num_threads):
    session = InferenceSession(VAE_DECODER, num_threads=num_threads, engine="gncpu")
    feeds = feeds_for(session)
    expected = InferenceSession(VAE_DECODER, num_threads=1, engine="gncpu").run(None, feeds)[0]
    for k, got in enumerate(run_in_threads(session, feeds, threads=8, runs_each=4)):
        assert_bitwise_equal(got, expected, f"(concurrent run {k}, num_threads={num_threads})")


def test_concurrent_runs_of_different_sessions_are_identical():
    # The first of two overlapping runs to finish must not lift BLAS's one-thread limit under the other.
    model = conv_gn_silu_model()
    small = InferenceSession(VAE_DECODER, num_threads=2, engine="gncpu")
    large = InferenceSession(model, num_threads=2, engine="gncpu")
    small_feeds, large_feeds = feeds_for(small), feeds_for(large)
    small_expected, large_expected = small.run(None, small_feeds)[0], large.run(None, large_feeds)[0]
    results = {}
    threads = [threading.Thread(target=lambda: results.update(small=run_in_threads(small, small_feeds, 2, 10))),
               threading.Thread(target=lambda: results.update(large=run_in_threads(large, large_feeds, 2, 2)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for got in results["small"]:
        assert_bitwise_equal(got, small_expected, "(VAE decoder beside another session)")
    for got in results["large"]:
        assert_bitwise_equal(got, large_expected, "(conv model beside another session)")


@pytest.mark.parametrize("engine", ["gncpu", "onnxruntime"])
def test_soak_8_threads_x_100_runs_identical_and_no_leak(engine):
    # Both engines: repeated and concurrent runs at one thread count give the same bytes.
    session = InferenceSession(VAE_DECODER, num_threads=2, engine=engine)
    feeds = feeds_for(session)
    expected = session.run(None, feeds)[0]
    run_in_threads(session, feeds, threads=8, runs_each=5)  # warm: thread pools, allocator arenas
    process = psutil.Process()
    before = process.memory_info().rss
    outputs = run_in_threads(session, feeds, threads=8, runs_each=100)
    growth = process.memory_info().rss - before
    differing = sum(got.tobytes() != expected.tobytes() for got in outputs)
    assert differing == 0, f"{differing} of {len(outputs)} concurrent results differ from the sequential one"
    del outputs
    assert growth < 64 << 20, f"RSS grew by {growth / 2**20:.1f} MiB over 800 runs"


def test_blas_is_held_to_one_thread_in_runs_from_any_thread():
    # threadpoolctl lets only the first Python thread that set OpenBLAS's limit (outside a
    # `with` block) set it again; a run that starts in another thread must still hold BLAS
    # to one thread.
    from threadpoolctl import ThreadpoolController
    from gncpu.onnx.session import _SingleThreadedBlas, _threadpool_controller

    with _SingleThreadedBlas(_threadpool_controller()):  # a run in the main thread sets the limit first
        pass
    seen = []

    def in_a_run():
        with _SingleThreadedBlas(_threadpool_controller()):
            seen.append([lib["num_threads"] for lib in ThreadpoolController().select(user_api="blas").info()])

    worker = threading.Thread(target=in_a_run)
    worker.start()
    worker.join()
    assert seen and seen[0] and set(seen[0]) == {1}, seen


def test_the_above_hold_with_an_avx2_hosts_blas_kernels():
    # OpenBLAS's Haswell kernels (what an AVX2-only host such as a Zen 3 runs) round a product
    # differently when it is split differently: the tests above caught that only with them
    # (the AVX-512 kernels happened to agree). Any AVX2 CPU runs them.
    assert LEVELS[_baseline.cpu_level()] != "baseline", "OpenBLAS's Haswell kernels need an AVX2 CPU"
    result = subprocess.run(python_command("-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.abspath(__file__),
                                           "-k", "not avx2_hosts"),
                            capture_output=True, text=True, env=subprocess_env(OPENBLAS_CORETYPE="Haswell"),
                            cwd=os.path.dirname(os.path.abspath(__file__)), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
