"""Build the gncpu kernel extension.

One Cython source (gncpu/kernel/_group_norm.pxi, which includes the kernel's
phases: _common, _statistics, _apply, _nchw, _nhwc .pxi) is compiled into several
extension modules, one per instruction-set level; gncpu.kernel picks the best
one the running CPU supports at import. So a wheel built here runs everywhere
and still uses AVX-512 where it exists (no -march=native needed).

Environment variables:
  GNCPU_NO_OPENMP=1   build without OpenMP (kernels then run serially)
  GNCPU_NATIVE=1      also compile the baseline variant with -march=native
"""
import os
import platform
import subprocess
import sys
import sysconfig
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

# -O3 for vectorization. -ffp-contract=fast is gcc's default; stated here so
# clang (whose default is 'on') fuses the same multiply-adds.
# -fno-trapping-math lets gcc turn the activations' clamps into blends (without
# it the AVX2 and SSE builds of those loops stay scalar); it changes no result,
# as gncpu never enables floating-point traps. No -ffast-math: it breaks NaN
# propagation, which the API promises, and reassociates the careful sums.
BASE_FLAGS = ["-O3", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math"]

# Instruction-set levels: compiler flags, and the kernels' tuning constants
# for each (macros read by gncpu/kernel/_tuning.h). x86-64-v4 = AVX-512 (F,
# BW, CD, DQ, VL); gcc tunes it for 256-bit vectors by default, so ask for 512
# explicitly.
# GNCPU_LANES = accumulators per sum in the statistics loop: 4 registers each
# for the sums and the squares (SSE2 and AVX2 have 16 vector registers; 64
# lanes of AVX2 took all 16 and spilled both sums to the stack every step).
X86_VARIANTS = {
    "baseline": ([], {"GNCPU_LANES": 16}),
    "avx2": (["-march=x86-64-v3"], {"GNCPU_LANES": 32}),
    # Masked (partial-vector) loop epilogues: a 49-element run ends in one
    # masked vector instead of up to 15 scalar iterations of an exp.
    "avx512": (["-march=x86-64-v4", "-mprefer-vector-width=512", "--param=vect-partial-vector-usage=1"],
               {"GNCPU_LANES": 64}),
}
# Other CPUs (one portable build): 4 accumulators of 128-bit vectors.
GENERIC_VARIANTS = {"baseline": ([], {"GNCPU_LANES": 16})}


def compiler_accepts(flags):
    """Compile and link a tiny OpenMP program with `flags`; True on success."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(void){return omp_get_max_threads() < 1;}\n")
        cmd = cc.split() + flags + [src, "-o", os.path.join(tmp, "probe")]
        try:
            return subprocess.run(cmd, capture_output=True).returncode == 0
        except OSError:
            return False


def openmp_flags():
    if os.environ.get("GNCPU_NO_OPENMP"):
        return [], []
    if sys.platform == "win32":
        return ["/openmp"], []
    if compiler_accepts(["-fopenmp"]):
        return ["-fopenmp"], ["-fopenmp"]
    # e.g. Apple clang without libomp: build serial kernels, still vectorized.
    print("gncpu: compiler has no OpenMP; building serial kernels", file=sys.stderr)
    return ["-fopenmp-simd"] if compiler_accepts(["-fopenmp-simd"]) else [], []


def extensions():
    omp_compile, omp_link = openmp_flags()
    is_x86 = platform.machine().lower() in ("x86_64", "amd64") and sys.platform != "win32"
    variants = X86_VARIANTS if is_x86 else GENERIC_VARIANTS
    native = ["-march=native"] if os.environ.get("GNCPU_NATIVE") else []
    exts = []
    for name, (isa_flags, tuning) in variants.items():
        flags = BASE_FLAGS + omp_compile + (isa_flags or native)
        if sys.platform == "win32":
            flags = ["/O2"] + omp_compile
        exts.append(
            Extension(
                f"gncpu.kernel._{name}",
                sources=[f"gncpu/kernel/_{name}.pyx"],
                include_dirs=[numpy.get_include(), "gncpu/kernel"],
                extra_compile_args=flags,
                extra_link_args=omp_link,
                define_macros=[
                    ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                    ("GNCPU_VARIANT", f'"{name}"'),
                    ("GNCPU_CFLAGS", '"' + " ".join(flags) + '"'),
                ] + [(macro, str(value)) for macro, value in tuning.items()],
            )
        )
    return exts


setup(
    ext_modules=cythonize(
        extensions(),
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
