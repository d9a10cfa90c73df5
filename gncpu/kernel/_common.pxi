# What every phase of the kernels uses: the cimports, the `real` fused type
# (float32 or float64, one specialization each), the tuning constants, the
# activation codes, the Moments record the statistics hand to the apply, and
# two small helpers both layout plans use (NULL-safe pointer offsets and a
# thread's contiguous share of work). Included first by _group_norm.pxi.

from cython.parallel cimport parallel, prange, threadid
from libc.math cimport sqrt, isfinite, exp, erfc, tanh, fabs, ldexp, ilogb, INFINITY
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy
cimport numpy as cnp

from gncpu.kernel._openmp cimport (GNCPU_HAVE_OPENMP, gncpu_barrier, omp_get_max_threads,
                                   omp_get_num_threads)

cnp.import_array()

cdef extern from "_cpu.h":
    int gncpu_cpu_level() noexcept nogil
    const char* GNCPU_VARIANT
    const char* GNCPU_CFLAGS
    const char* GNCPU_COMPILER

cdef extern from "_vecmath.h":
    float gn_silu_f32(float) noexcept nogil
    float gn_gelu_f32(float) noexcept nogil
    float gn_gelu_tanh_f32(float) noexcept nogil

ctypedef fused real:
    float
    double

cdef extern from "_tuning.h":
    # Independent accumulators per sum, per variant (see _tuning.h): 4
    # vector registers of float32 each for the sums and the squares, so the
    # adds pipeline instead of waiting on one dependency chain and nothing
    # spills. Plain C arrays indexed by the inner loop: gcc vectorizes them
    # without -ffast-math, and the summation order is fixed by the source.
    enum: LANES "GNCPU_LANES"

cdef enum:
    # 4096 float32 = 16 KiB: a residual chunk's stats pass reads it from L1.
    CHUNK = 4096
    # NCHW channel runs of SHORT_RUN_MIN <= HW < SHORT_RUN_MAX elements are
    # applied as one flat loop per chunk (apply_short_runs): at least one
    # AVX-512 vector per run, and short enough that per-channel loops cost
    # more than their work.
    SHORT_RUN_MIN = 16
    SHORT_RUN_MAX = 256
    RUN_TABLE = 258     # channels a chunk can touch: CHUNK / SHORT_RUN_MIN + 2
    # NHWC geometry (see GroupsNHWC): a line is at least LINE elements; a
    # statistics block at least ROWS rows and about NHWC_BLOCK elements,
    # summed SUB_LINES lines at a time in the working precision.
    LINE = 512
    ROWS = 64
    NHWC_BLOCK = 65536
    SUB_LINES = 64
    TABLE_PAD = 16      # float32 lanes of the widest vector (see GroupsNHWC.table_line)
    # A fused activation's apply prefetches the next group when the two
    # groups take at most this many bytes (well inside a 512 KiB L2).
    PREFETCH_GROUP_BYTES = 393216
    COPY_BLOCK = 65536
    HALF_BLOCK = 65536  # elements per thread work item of the float16 conversions

cdef enum:
    ACT_NONE = 0
    ACT_SILU = 1
    ACT_RELU = 2
    ACT_GELU = 3
    ACT_GELU_TANH = 4

ACTIVATION_CODES = {None: ACT_NONE, "silu": ACT_SILU, "relu": ACT_RELU, "gelu": ACT_GELU,
                    "gelu_tanh": ACT_GELU_TANH}

cdef struct Moments:
    double count
    double mean
    double m2      # sum of squared deviations from mean, in units of scale**2
    double scale   # 1, except from exact_moments on data beyond ~1e154


cdef inline const real* shift(const real* p, Py_ssize_t by) noexcept nogil:
    return p + by if p != NULL else NULL


cdef inline real* shift_mut(real* p, Py_ssize_t by) noexcept nogil:
    return p + by if p != NULL else NULL


cdef inline Py_ssize_t share_start(Py_ssize_t total, Py_ssize_t t, Py_ssize_t threads) noexcept nogil:
    """First item of thread t's contiguous share of `total` items."""
    return total * t // threads
