"""Fork safety: after the parent ran multi-threaded, forked children (a fork
Pool, a fork ProcessPoolExecutor, a bare os.fork) never hang and compute the
parent's results bit for bit, for group_norm and for an ONNX session.

Each case runs tests/fork_check.py in a subprocess of its own: every wait on a
child there has a timeout, the subprocess has one too, and its whole process
group (hung grandchildren included) is killed at the end.
"""
import os
import signal
import subprocess

import numpy as np
import pytest

import gncpu
from gncpu import _config, _fork
from conftest import assert_bitwise_equal, python_command, subprocess_env

pytest.importorskip("onnx")

CHECK_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fork_check.py")
SERIAL_NOTE = "forked child: kernels run on 1 thread"


def run_fork_check(workload, mechanism, out_path):
    process = subprocess.Popen(python_command(CHECK_SCRIPT, workload, mechanism, str(out_path)),
                               env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        stdout, stderr = "", "the fork check itself did not finish in 180 s"
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # children left hanging, if any
        except ProcessLookupError:
            pass
        process.wait()
    return process.returncode, stdout + stderr


@pytest.mark.parametrize("mechanism", ["pool", "executor", "os_fork"])
@pytest.mark.parametrize("workload", ["group_norm", "onnx_session", "onnx_session_ort"])
def test_forked_children_compute_the_parents_results(workload, mechanism, tmp_path):
    out = tmp_path / "results.npz"
    returncode, output = run_fork_check(workload, mechanism, out)
    assert returncode == 0, f"fork check {workload}/{mechanism} failed (3 = a child hung):\n{output}"
    data = np.load(out)
    assert str(data["parent_note"]) == "not a forked child"
    assert len(data["results"]) >= 1
    for note, result in zip(data["notes"], data["results"]):
        assert str(note).startswith(SERIAL_NOTE), note
        assert_bitwise_equal(result, data["parent"], f"({workload} in a {mechanism} child vs the parent)")


@pytest.fixture
def fork_state():
    """Save and restore _fork's flags around a test that simulates a fork."""
    saved = (_fork._team_used, _fork._forked, _fork._team_unusable)
    yield
    _fork._team_used, _fork._forked, _fork._team_unusable = saved


def test_child_of_a_process_that_used_openmp_runs_serially(fork_state):
    x = np.random.default_rng(3).standard_normal((1, 64, 64, 64)).astype(np.float32)
    expected = gncpu.group_norm(x, 32, num_threads=2)
    assert _fork._team_used, "a 2-thread call on 2^18 elements should have been noted"
    _fork._after_fork_in_child()  # what os.register_at_fork runs in a child
    assert _fork.team_unusable()
    assert _config.resolve_threads(2, x.size) == 1
    assert _config.config()["fork"].startswith(SERIAL_NOTE)
    assert_bitwise_equal(gncpu.group_norm(x, 32, num_threads=2), expected)


def test_child_of_a_process_without_a_team_threads_as_usual(fork_state):
    _fork._team_used = False
    _fork._after_fork_in_child()
    assert not _fork.team_unusable()
    assert _config.resolve_threads(2, 1 << 20) == 2
    assert _config.config()["fork"] == "forked child: the parent opened no OpenMP team, kernels use threads as usual"


def test_single_threaded_calls_do_not_count_as_a_team(fork_state):
    _fork._team_used = False
    gncpu.group_norm(np.ones((1, 64, 64, 64), np.float32), 32, num_threads=1)
    gncpu.group_norm(np.ones((1, 8, 4, 4), np.float32), 2, num_threads=2)  # too small to thread
    assert not _fork._team_used
