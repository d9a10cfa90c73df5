"""Compile the CUDA kernels without a GPU and read what the compiler says.

- nvcc -cubin for each supported architecture, warnings as errors, with the
  ptxas resource report (registers, spills, stack frame) parsed per kernel;
- NVRTC (libnvrtc from the nvidia-cuda-nvrtc wheel, or a CUDA toolkit)
  through ctypes, with the options CuPy's RawModule uses at run time.

Used by the tests and by `python -m gncpu.cuda.report`. Nothing here needs
or touches a GPU.
"""
import ctypes
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import plan as cuda_plan, source_path

__all__ = ["ARCHITECTURES", "KernelResources", "find_nvcc", "nvcc_compile", "parse_ptxas_report",
           "find_nvrtc", "nvrtc_compile", "nvrtc_options"]

# Turing, Ampere (A100, RTX 30), Ada (RTX 40, L4), Hopper. nvcc 13 dropped
# sm_70; Blackwell (sm_100, sm_120) builds come from the PTX CuPy's NVRTC
# generates on the user's machine.
ARCHITECTURES = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90")


@dataclass(frozen=True)
class KernelResources:
    kernel: str
    arch: str
    registers: int
    stack_bytes: int
    spill_store_bytes: int
    spill_load_bytes: int
    shared_bytes: int


_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_ptxas_report(text):
    """KernelResources for each entry function in ptxas -v output."""
    found = []
    kernel = arch = frame = None
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            kernel, arch, frame = m.group(1), m.group(2), None
        elif (m := _FRAME.search(line)) and kernel:
            frame = tuple(int(v) for v in m.groups())
        elif (m := _USED.search(line)) and kernel:
            stack, stores, loads = frame if frame else (0, 0, 0)
            found.append(KernelResources(kernel, arch, int(m.group(1)), stack, stores, loads,
                                         int(m.group(2) or 0)))
            kernel = None
    return found


def find_nvcc():
    """Path of nvcc from $CUDA_HOME / $CUDA_PATH, PATH or /usr/local/cuda;
    None if there is none. (The nvidia-cuda-nvcc wheel alone is not enough:
    it lacks cicc and the runtime headers.)"""
    candidates = [os.path.join(os.environ[v], "bin", "nvcc") for v in ("CUDA_HOME", "CUDA_PATH") if v in os.environ]
    candidates += [shutil.which("nvcc") or "", "/usr/local/cuda/bin/nvcc"]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def nvcc_compile(arch, nvcc=None):
    """Compile the kernels to a cubin for `arch` (e.g. "sm_80") with
    warnings as errors; return (cubin bytes, ptxas report text). Raises
    RuntimeError with the compiler's output on failure."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise RuntimeError("nvcc not found (set CUDA_HOME, or put nvcc on PATH)")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, f"group_norm_{arch}.cubin")
        cmd = [nvcc, "-cubin", f"-arch={arch}", *cuda_plan.compile_options(), "-Werror", "all-warnings",
               "-Xptxas", "-v,-warn-spills,-warn-lmem-usage", "-o", out, str(source_path())]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"nvcc failed for {arch}:\n{' '.join(cmd)}\n{result.stdout}{result.stderr}")
        return Path(out).read_bytes(), result.stdout + result.stderr


def find_nvrtc():
    """Path of libnvrtc: the nvidia-cuda-nvrtc wheel (CUDA 13 or 12 layout),
    then a CUDA toolkit. None if there is none."""
    patterns = []
    for entry in sys.path:
        patterns += [os.path.join(entry, "nvidia", "cu13", "lib", "libnvrtc.so.*"),
                     os.path.join(entry, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so.*")]
    for root in [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]:
        if root:
            patterns += [os.path.join(root, "lib64", "libnvrtc.so*"), os.path.join(root, "lib", "libnvrtc.so*")]
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            if "builtins" not in path and "alt" not in os.path.basename(path):
                return path
    return None


def nvrtc_options(arch):
    """What CuPy's RawModule passes NVRTC on a device of `arch`: our
    options, CuPy's own additions, and the architecture."""
    from ._launcher import CUPY_ADDED_OPTIONS

    return (*cuda_plan.compile_options(), *CUPY_ADDED_OPTIONS, f"-arch={arch}")


def _nvrtc_library(path):
    lib = ctypes.CDLL(path)
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    return lib


def nvrtc_compile(arch, extra_options=(), library=None):
    """Compile the kernel source as CuPy would, with NVRTC, for `arch`.
    Returns (cubin bytes, log text, NVRTC version). Raises RuntimeError
    with the log if compilation fails."""
    path = library or find_nvrtc()
    if path is None:
        raise RuntimeError("libnvrtc not found: pip install nvidia-cuda-nvrtc")
    lib = _nvrtc_library(path)

    def check(status, what):
        if status:
            raise RuntimeError(f"{what}: {lib.nvrtcGetErrorString(status).decode()}")

    major, minor = ctypes.c_int(), ctypes.c_int()
    check(lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    code = f'#line 1 "{cuda_plan.KERNEL_SOURCE}"\n' + source_path().read_text()
    program = ctypes.c_void_p()
    check(lib.nvrtcCreateProgram(ctypes.byref(program), code.encode(), cuda_plan.KERNEL_SOURCE.encode(), 0,
                                 None, None), "nvrtcCreateProgram")
    try:
        options = [o.encode() for o in (*nvrtc_options(arch), *extra_options)]
        status = lib.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
        size = ctypes.c_size_t()
        check(lib.nvrtcGetProgramLogSize(program, ctypes.byref(size)), "nvrtcGetProgramLogSize")
        log = ctypes.create_string_buffer(size.value)
        check(lib.nvrtcGetProgramLog(program, log), "nvrtcGetProgramLog")
        log_text = log.value.decode(errors="replace")
        if status:
            raise RuntimeError(f"NVRTC failed for {arch} ({lib.nvrtcGetErrorString(status).decode()}), "
                               f"options {[o.decode() for o in options]}:\n{log_text}")
        check(lib.nvrtcGetCUBINSize(program, ctypes.byref(size)), "nvrtcGetCUBINSize")
        cubin = ctypes.create_string_buffer(size.value)
        check(lib.nvrtcGetCUBIN(program, cubin), "nvrtcGetCUBIN")
        return cubin.raw, log_text, (major.value, minor.value)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(program))
