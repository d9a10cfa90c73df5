"""The CUDA source compiles, without a GPU, for every supported architecture:
nvcc with warnings as errors and ptxas's resource report (no spills, no
stack frame), and NVRTC with the options CuPy's RawModule uses at run time.
The register table is printed (pytest -s, or python -m gncpu.cuda.report)."""
import pytest

from cuda_emulation import unavailable
from gncpu.cuda import buildcheck, plan as cuda_plan
from gncpu.cuda.report import format_table

ARCHS = buildcheck.ARCHITECTURES


@pytest.fixture(scope="module")
def nvcc():
    path = buildcheck.find_nvcc()
    if path is None:
        unavailable("nvcc not found: install the CUDA toolkit or set CUDA_HOME")
    return path


@pytest.fixture(scope="module")
def nvcc_reports(nvcc):
    return {arch: buildcheck.nvcc_compile(arch, nvcc) for arch in ARCHS}


@pytest.fixture(scope="module")
def nvrtc():
    path = buildcheck.find_nvrtc()
    if path is None:
        unavailable("libnvrtc not found: pip install nvidia-cuda-nvrtc (part of the test extra)")
    return path


@pytest.mark.parametrize("arch", ARCHS)
def test_nvcc_builds_without_spills(nvcc_reports, arch):
    cubin, report = nvcc_reports[arch]
    assert cubin[:4] == b"\x7fELF"
    resources = buildcheck.parse_ptxas_report(report)
    assert sorted(r.kernel for r in resources) == sorted(cuda_plan.KERNEL_NAMES), report
    for r in resources:
        assert r.arch == arch
        assert r.spill_store_bytes == 0 and r.spill_load_bytes == 0, f"{r.kernel} spills on {arch}: {r}"
        assert r.stack_bytes == 0, f"{r.kernel} has a {r.stack_bytes}-byte stack frame on {arch}"
        # __launch_bounds__(BLOCK_THREADS) must leave room for 2 blocks per SM
        assert 0 < r.registers <= 65536 // (2 * cuda_plan.BLOCK_THREADS), r
    assert "warning" not in report.lower(), report


def test_register_report(nvcc_reports, capsys):
    table = {}
    for arch, (_, report) in nvcc_reports.items():
        for r in buildcheck.parse_ptxas_report(report):
            table.setdefault(r.kernel, {})[arch] = r
    text = format_table(table)
    with capsys.disabled():
        print("\n" + text)
    assert "spill bytes (all kernels, all archs): 0;" in text


def test_report_parser_reads_spills():
    # a report of the shape ptxas prints for a kernel that spills
    report = """ptxas info    : Compiling entry function 'k' for 'sm_80'
ptxas info    : Function properties for k
    24 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 96 bytes smem, 376 bytes cmem[0]
"""
    (r,) = buildcheck.parse_ptxas_report(report)
    assert (r.kernel, r.arch, r.registers, r.stack_bytes, r.spill_store_bytes, r.spill_load_bytes,
            r.shared_bytes) == ("k", "sm_80", 255, 24, 8, 12, 96)


@pytest.mark.parametrize("arch", ARCHS)
def test_nvrtc_compiles_with_cupy_options(nvrtc, arch):
    cubin, log, version = buildcheck.nvrtc_compile(arch, ("--ptxas-options=-v",), library=nvrtc)
    assert cubin[:4] == b"\x7fELF"
    for name in cuda_plan.KERNEL_NAMES:
        assert name.encode() in cubin
    resources = buildcheck.parse_ptxas_report(log)
    assert sorted(r.kernel for r in resources) == sorted(cuda_plan.KERNEL_NAMES), log
    assert all(r.spill_store_bytes == r.spill_load_bytes == r.stack_bytes == 0 for r in resources), log
    assert "warning" not in log.lower(), log


def test_nvrtc_options_are_the_launchers():
    from gncpu.cuda._launcher import CUPY_ADDED_OPTIONS

    options = buildcheck.nvrtc_options("sm_80")
    assert options == (*cuda_plan.compile_options(), *CUPY_ADDED_OPTIONS, "-arch=sm_80")
    assert f"-DGN_BLOCK_THREADS={cuda_plan.BLOCK_THREADS}" in options


def test_nvrtc_reports_errors(nvrtc):
    with pytest.raises(RuntimeError, match="NVRTC failed"):
        buildcheck.nvrtc_compile("sm_80", ("-DGN_BLOCK_THREADS=100",), library=nvrtc)


def test_cupy_still_adds_these_options():
    cupy_compiler = pytest.importorskip("cupy.cuda.compiler", reason="CuPy is not installed")
    import inspect

    from gncpu.cuda._launcher import CUPY_ADDED_OPTIONS

    source = inspect.getsource(cupy_compiler)
    for option in CUPY_ADDED_OPTIONS:
        assert f"'{option}'" in source or f'"{option}"' in source, option
