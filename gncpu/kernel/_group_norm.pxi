# Group Normalization kernels: compiled once per instruction-set level (see
# setup.py); each _<level>.pyx includes this file, which includes the phases
# in order, so each variant is still one Cython module:
#
#   _common.pxi      cimports, the `real` fused type, constants, activation
#                    codes, the Moments record, helpers both plans use
#   _statistics.pxi  chunk moments, their merges, the exact float64 fallback
#   _apply.pxi       activations and the affine loops (the fused epilogue)
#   _nchw.pxi        the NCHW plan (run_nchw)
#   _nhwc.pxi        the NHWC plan (run_nhwc)
#
# This file holds the Python entry points.
#
# Callers (gncpu/functional.py) have validated everything: arrays are
# C-contiguous, of the kernel's dtype, shapes agree, num_groups divides C,
# outputs do not overlap inputs except where noted.

include "_common.pxi"
include "_statistics.pxi"
include "_apply.pxi"
include "_nchw.pxi"
include "_nhwc.pxi"


# ---------------------------------------------------------------- Python entry

import os


def last_level_cache_bytes():
    """The last-level cache's size as the C library reports it (sysconf; on
    x86 glibc reads it from CPUID), or 32 MiB when it reports none."""
    for name in ("SC_LEVEL3_CACHE_SIZE", "SC_LEVEL2_CACHE_SIZE"):
        try:
            size = os.sysconf(name)
        except (ValueError, OSError):
            continue
        if size > 0:
            return size
    return 32 << 20


# Outputs of at least this many bytes are stored past the cache (see
# _stream.h), in both layouts, with or without activation; -1: never.
# Default: half the last-level cache, where the call's own traffic (x read,
# y written) no longer fits in it, so y would not be there for the next
# operation anyway. On Zen 4 (32 MiB L3) streaming paid
# from 16 MiB on 1 and 2 threads, counting a read of y after the call; at 5
# MiB it cost 10-30%.
cdef Py_ssize_t stream_from_bytes = last_level_cache_bytes() // 2


def stream_threshold():
    """Output size in bytes from which the apply stores past the cache (-1:
    never; see set_stream_threshold)."""
    return stream_from_bytes


def set_stream_threshold(Py_ssize_t nbytes):
    """Store outputs of at least `nbytes` bytes past the cache (non-temporal
    stores; 0: always, -1: never). The same bits either way. Returns the
    previous threshold."""
    global stream_from_bytes
    if nbytes < -1:
        raise ValueError(f"nbytes={nbytes}: expected a size >= 0, or -1 for never")
    previous = stream_from_bytes
    stream_from_bytes = nbytes
    return previous


cdef inline void* data_or_null(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


def group_norm(cnp.ndarray x, cnp.ndarray out, object weight, object bias,
               Py_ssize_t num_groups, double eps, int activation, int threads,
               bint channels_last=False, object skip=None, object skip_bias=None,
               object sum_out=None):
    """Normalize x into out.

    x        IN   C-contiguous float32/float64, (N, C, *spatial), or
                  (N, *spatial, C) when channels_last
    out      OUT  same shape and dtype, C-contiguous; may be x itself
    weight, bias, skip_bias  IN  None or C-contiguous (C,) arrays of x's dtype
    skip     IN   None or like x
    sum_out  OUT  None or like x: receives x + skip + skip_bias
    activation    one of ACTIVATION_CODES' values
    """
    cdef Py_ssize_t n = x.shape[0]
    cdef Py_ssize_t c = x.shape[x.ndim - 1] if channels_last else x.shape[1]
    cdef Py_ssize_t spatial = x.size // (n * c) if n * c else 0
    cdef int rc = 0
    cdef bint residual = skip is not None or skip_bias is not None
    cdef void* xp = cnp.PyArray_DATA(x)
    cdef void* yp = cnp.PyArray_DATA(out)
    cdef void* sp = data_or_null(skip)
    cdef void* bufp = (data_or_null(sum_out) if sum_out is not None else yp) if residual else NULL
    cdef void* wp = data_or_null(weight)
    cdef void* bp = data_or_null(bias)
    cdef void* sbp = data_or_null(skip_bias)
    cdef bint single = cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32
    cdef bint stream = GNCPU_HAVE_STREAM and 0 <= stream_from_bytes <= out.nbytes
    cdef GroupsNCHW nchw
    cdef GroupsNHWC nhwc
    if x.size == 0:
        return out
    if channels_last:
        nhwc_geometry(&nhwc, spatial, c, num_groups)
        nhwc.eps = eps
        nhwc.activation = activation
        nhwc.stream = stream
        with nogil:
            if single:
                rc = run_nhwc(<const float*>xp, <float*>yp, <const float*>sp, <float*>bufp,
                              <const float*>wp, <const float*>bp, <const float*>sbp, n, &nhwc,
                              threads)
            else:
                rc = run_nhwc(<const double*>xp, <double*>yp, <const double*>sp, <double*>bufp,
                              <const double*>wp, <const double*>bp, <const double*>sbp, n, &nhwc,
                              threads)
    else:
        nchw.hw = spatial
        nchw.groups = num_groups
        nchw.channels_per_group = c // num_groups
        nchw.length = nchw.channels_per_group * spatial
        nchw.chunks_per_group = (nchw.length + CHUNK - 1) // CHUNK
        nchw.eps = eps
        nchw.activation = activation
        nchw.stream = stream
        with nogil:
            if single:
                rc = run_nchw(<const float*>xp, <float*>yp, <const float*>sp, <float*>bufp,
                              <const float*>wp, <const float*>bp, <const float*>sbp, n, c, &nchw,
                              threads)
            else:
                rc = run_nchw(<const double*>xp, <double*>yp, <const double*>sp, <double*>bufp,
                              <const double*>wp, <const double*>bp, <const double*>sbp, n, c,
                              &nchw, threads)
    if rc != 0:
        raise MemoryError("gncpu: could not allocate scratch memory for the group statistics")
    return out


cdef inline bint native_float(cnp.ndarray a, int typenum):
    return cnp.PyArray_TYPE(a) == typenum and cnp.PyArray_ISNOTSWAPPED(a)


cdef inline bint channel_param_ok(object p, int typenum, Py_ssize_t channels):
    """p is None or a C-contiguous (channels,) array of the input's dtype."""
    cdef cnp.ndarray a
    if p is None:
        return True
    if type(p) is not cnp.ndarray:
        return False
    a = <cnp.ndarray>p
    return (native_float(a, typenum) and cnp.PyArray_NDIM(a) == 1 and a.shape[0] == channels
            and cnp.PyArray_IS_C_CONTIGUOUS(a))


cdef inline bint disjoint(cnp.ndarray a, cnp.ndarray b):
    """C-contiguous a and b share no byte (np.may_share_memory's bounds test)."""
    cdef char* a0 = <char*>cnp.PyArray_DATA(a)
    cdef char* b0 = <char*>cnp.PyArray_DATA(b)
    return a0 + cnp.PyArray_NBYTES(a) <= b0 or b0 + cnp.PyArray_NBYTES(b) <= a0


def common_call(object input, object num_groups, object weight, object bias, object eps,
                object activation, bint channels_last, object out, object num_threads,
                object resolve_threads):
    """gncpu.functional's fast path, its checks in C (in Python they cost a
    few times the kernel on small inputs): y for a C-contiguous native
    float32/float64 ndarray (NCHW, or NHWC with channels_last), an int
    num_groups that divides C, weight and bias None or C-contiguous (C,)
    arrays of its dtype, a float eps in [0, inf), a known activation, and out
    None or an ndarray like the input that is the input itself or does not
    overlap it; threads from resolve_threads(num_threads, size).

    Returns None when anything differs: the caller then runs the full checks,
    which accept everything accepted here and name what is wrong otherwise."""
    cdef cnp.ndarray x, y
    cdef int typenum, ndim, d
    cdef Py_ssize_t channels
    cdef object act
    if type(input) is not cnp.ndarray:
        return None
    x = <cnp.ndarray>input
    typenum = cnp.PyArray_TYPE(x)
    ndim = cnp.PyArray_NDIM(x)
    if not ((typenum == cnp.NPY_FLOAT32 or typenum == cnp.NPY_FLOAT64)
            and cnp.PyArray_ISNOTSWAPPED(x) and ndim >= (3 if channels_last else 2)
            and cnp.PyArray_IS_C_CONTIGUOUS(x)):
        return None
    channels = x.shape[ndim - 1] if channels_last else x.shape[1]
    if type(num_groups) is not int or not 0 < num_groups <= channels \
            or channels % <Py_ssize_t>num_groups != 0:
        return None
    if type(eps) is not float or not 0.0 <= <double>eps < INFINITY:
        return None
    if not (activation is None or type(activation) is str):
        return None
    act = ACTIVATION_CODES.get(activation)
    if act is None or not (channel_param_ok(weight, typenum, channels)
                           and channel_param_ok(bias, typenum, channels)):
        return None
    if out is None:
        y = cnp.PyArray_EMPTY(ndim, x.shape, typenum, 0)
    else:
        if type(out) is not cnp.ndarray:
            return None
        y = <cnp.ndarray>out
        if not (native_float(y, typenum) and cnp.PyArray_NDIM(y) == ndim
                and cnp.PyArray_IS_C_CONTIGUOUS(y) and cnp.PyArray_ISWRITEABLE(y)):
            return None
        for d in range(ndim):
            if y.shape[d] != x.shape[d]:
                return None
        if y is not x and not disjoint(x, y):
            return None
    return group_norm(x, y, weight, bias, num_groups, eps, act,
                      resolve_threads(num_threads, cnp.PyArray_SIZE(x)), channels_last)


cdef inline void copy_block(const char* src, char* dst, Py_ssize_t k, Py_ssize_t nbytes) noexcept nogil:
    cdef Py_ssize_t start = k * COPY_BLOCK
    memcpy(dst + start, src + start, min(<Py_ssize_t>COPY_BLOCK, nbytes - start))


def parallel_copy(cnp.ndarray src, cnp.ndarray dst, int threads):
    """Copy src into dst (both C-contiguous, same nbytes) on `threads` threads:
    the memory-bandwidth floor the benchmarks compare against."""
    cdef Py_ssize_t nbytes = src.nbytes
    cdef const char* s = <const char*>cnp.PyArray_DATA(src)
    cdef char* d = <char*>cnp.PyArray_DATA(dst)
    cdef Py_ssize_t k, blocks = (nbytes + COPY_BLOCK - 1) // COPY_BLOCK
    with nogil:
        for k in prange(blocks, num_threads=threads, schedule="static"):
            copy_block(s, d, k, nbytes)
    return dst


cdef extern from "_half.h":
    const bint GNCPU_HAVE_FLOAT16
    void gn_half_to_float(const void* src, float* dst, Py_ssize_t n) noexcept nogil
    void gn_float_to_half(const float* src, void* dst, Py_ssize_t n) noexcept nogil

# Whether half_to_float / float_to_half exist in this build (see _half.h).
HAVE_FLOAT16 = bool(GNCPU_HAVE_FLOAT16)


cdef int _check_half_pair(cnp.ndarray half, cnp.ndarray single) except -1:
    if not GNCPU_HAVE_FLOAT16:
        raise RuntimeError("this build has no float16 conversion (see HAVE_FLOAT16)")
    if half.dtype.num != cnp.NPY_FLOAT16 or single.dtype.num != cnp.NPY_FLOAT32:
        raise TypeError(f"expected float16 and float32 arrays, got {half.dtype} and {single.dtype}")
    if not (cnp.PyArray_IS_C_CONTIGUOUS(half) and cnp.PyArray_IS_C_CONTIGUOUS(single)):
        raise ValueError("both arrays must be C-contiguous")
    if half.size != single.size:
        raise ValueError(f"sizes differ: {half.size} and {single.size}")
    return 0


def half_to_float(cnp.ndarray src, cnp.ndarray dst, int threads=1):
    """dst (float32) = src (float16), both C-contiguous and the same size.
    Elementwise: the result does not depend on `threads`."""
    _check_half_pair(src, dst)
    cdef const char* s = <const char*>cnp.PyArray_DATA(src)
    cdef float* d = <float*>cnp.PyArray_DATA(dst)
    cdef Py_ssize_t n = src.size, k, blocks = (n + HALF_BLOCK - 1) // HALF_BLOCK
    with nogil:
        if threads <= 1 or blocks < 2:
            gn_half_to_float(s, d, n)
        else:
            for k in prange(blocks, num_threads=threads, schedule="static"):
                gn_half_to_float(s + 2 * k * HALF_BLOCK, d + k * HALF_BLOCK,
                                 min(<Py_ssize_t>HALF_BLOCK, n - k * HALF_BLOCK))
    return dst


def float_to_half(cnp.ndarray src, cnp.ndarray dst, int threads=1):
    """dst (float16) = src (float32) rounded to nearest even, both C-contiguous
    and the same size. Elementwise: the result does not depend on `threads`."""
    _check_half_pair(dst, src)
    cdef const float* s = <const float*>cnp.PyArray_DATA(src)
    cdef char* d = <char*>cnp.PyArray_DATA(dst)
    cdef Py_ssize_t n = src.size, k, blocks = (n + HALF_BLOCK - 1) // HALF_BLOCK
    with nogil:
        if threads <= 1 or blocks < 2:
            gn_float_to_half(s, d, n)
        else:
            for k in prange(blocks, num_threads=threads, schedule="static"):
                gn_float_to_half(s + k * HALF_BLOCK, d + 2 * k * HALF_BLOCK,
                                 min(<Py_ssize_t>HALF_BLOCK, n - k * HALF_BLOCK))
    return dst


def cpu_level():
    """0 baseline, 1 x86-64-v3 (AVX2+FMA), 2 x86-64-v4 (AVX-512) on this CPU."""
    return gncpu_cpu_level()


def max_threads():
    """omp_get_max_threads(): honours OMP_NUM_THREADS and threadpoolctl limits."""
    return omp_get_max_threads()


def build_info():
    return {
        "variant": GNCPU_VARIANT.decode(),
        "compiler": GNCPU_COMPILER.decode(),
        "cflags": GNCPU_CFLAGS.decode(),
        "openmp": bool(GNCPU_HAVE_OPENMP),
        "chunk": CHUNK,
        "lanes": LANES,
    }
