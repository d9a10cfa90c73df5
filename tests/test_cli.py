"""show_config(), `python -m gncpu info | demo`, GNCPU_KERNEL, and what
importing gncpu does (nothing visible). Subprocesses run from the repo root,
as the README shows."""
import re
import subprocess
import sys

import pytest

import gncpu
from conftest import F32_TOL, REPO_ROOT, SELECTED_VARIANT, VARIANTS, python_command, subprocess_env

CONFIG_FIELDS = ["version", "python", "platform", "compiler", "openmp", "threads", "omp_max_threads",
                 "OMP_NUM_THREADS", "fork", "omp_idle_spin", "kernel_variant", "cpu_supports", "cflags",
                 "min_elements_per_thread", "chunk_elements", "stream_stores_from"]
# The CUDA path's fields follow; which ones depends on whether CuPy is
# installed and sees a device.
CUDA_FIELDS = ["cuda_block_threads", "cuda_chunk_elements", "cuda_compile_options", "cupy"]


def run_gncpu(*args, **env):
    return subprocess.run(python_command(*args), cwd=REPO_ROOT, capture_output=True, text=True,
                          env=subprocess_env(**env), timeout=300)


def parse_config(text):
    """'   key: value' lines -> dict."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def assert_config_fields(fields):
    assert list(fields)[:len(CONFIG_FIELDS)] == CONFIG_FIELDS
    assert set(CUDA_FIELDS) <= set(fields)
    assert set(fields) <= set(CONFIG_FIELDS) | set(CUDA_FIELDS) | {"cuda_devices"}


def test_show_config_prints_every_field(capsys):
    gncpu.show_config()
    fields = parse_config(capsys.readouterr().out)
    assert_config_fields(fields)
    assert fields["version"] == gncpu.__version__
    assert fields["python"] == sys.version.split()[0]
    assert fields["kernel_variant"] == SELECTED_VARIANT
    assert fields["threads"] == str(gncpu.get_num_threads())
    assert fields["openmp"] in ("True", "False")
    assert fields["chunk_elements"] == "4096"
    assert fields["cpu_supports"] in ("baseline", "avx2", "avx512")


def test_config_follows_set_num_threads(restore_threads):
    gncpu.set_num_threads(1)
    assert gncpu._config.config()["threads"] == 1


def test_config_names_the_flags_of_the_variant_it_runs():
    config = gncpu._config.config()
    flags = {"baseline": None, "avx2": "-march=x86-64-v3", "avx512": "-march=x86-64-v4"}
    expected = flags[config["kernel_variant"]]
    if expected:
        assert expected in config["cflags"]
    assert "-ffast-math" not in config["cflags"], "fast-math breaks the NaN guarantees"
    if config["openmp"]:
        assert "-fopenmp" in config["cflags"]


def test_info_command():
    run = run_gncpu("-m", "gncpu", "info")
    assert run.returncode == 0, run.stderr
    fields = parse_config(run.stdout)
    assert_config_fields(fields)
    assert fields["kernel_variant"] == SELECTED_VARIANT
    assert fields["version"] == gncpu.__version__


@pytest.mark.parametrize("variant", [name for name, _ in VARIANTS])
def test_gncpu_kernel_env_forces_a_variant(variant):
    run = run_gncpu("-m", "gncpu", "info", GNCPU_KERNEL=variant)
    assert run.returncode == 0, run.stderr
    assert parse_config(run.stdout)["kernel_variant"] == variant


def test_gncpu_kernel_env_rejects_unknown_variants():
    run = run_gncpu("-m", "gncpu", "info", GNCPU_KERNEL="sse9")
    assert run.returncode != 0
    assert "GNCPU_KERNEL='sse9'" in run.stderr
    assert all(name in run.stderr for name, _ in VARIANTS)


def test_omp_num_threads_shows_in_info():
    fields = parse_config(run_gncpu("-m", "gncpu", "info", OMP_NUM_THREADS="1").stdout)
    assert fields["OMP_NUM_THREADS"] == "1" and fields["threads"] == "1"


def test_demo_command():
    run = run_gncpu("-m", "gncpu", "demo")
    assert run.returncode == 0, run.stderr
    assert "group_norm on (1, 320, 64, 64), 32 groups" in run.stdout
    match = re.search(r"max \|error\| vs float64:\s+gncpu (\S+)\s+numpy float32 (\S+)", run.stdout)
    assert match, run.stdout
    gncpu_error, numpy_error = map(float, match.groups())
    assert gncpu_error <= F32_TOL["offset_1e4"]
    assert numpy_error > gncpu_error  # the demo's point: a naive float32 GN is worse
    assert re.search(r"median time:\s+gncpu\s+[\d.]+ us\s+numpy\s+[\d.]+ us", run.stdout), run.stdout


@pytest.mark.parametrize("args", [[], ["frobnicate"]], ids=["no_command", "unknown_command"])
def test_bad_command_line(args):
    run = run_gncpu("-m", "gncpu", *args)
    assert run.returncode == 2
    assert "usage:" in run.stderr


_IMPORT_PROBE = """
import sys, threading
before = threading.active_count()
import gncpu
heavy = sorted(m for m in ("torch", "onnx", "onnxruntime", "cupy", "threadpoolctl", "psutil")
               if m in sys.modules)
print(threading.active_count() - before, ",".join(heavy) or "-")
"""


def test_import_has_no_side_effects():
    """Importing gncpu starts no threads, prints nothing, and imports no
    optional dependency (the library is torch-free)."""
    run = run_gncpu("-c", _IMPORT_PROBE)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["0", "-"]
    assert run.stderr == ""
