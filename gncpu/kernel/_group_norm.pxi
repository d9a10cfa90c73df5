# Group Normalization kernels: compiled once per instruction-set level (see
# setup.py); each _<level>.pyx includes this file.
#
# Callers (gncpu/functional.py) have validated everything: arrays are
# C-contiguous, of the kernel's dtype, shapes agree, num_groups divides C.
#
# Work decomposition. A group of one sample is L = (C/G) * HW contiguous
# elements. It is cut into fixed CHUNK-element chunks; each chunk's moments
# (count, mean, M2) are computed in the working precision about a centre taken
# from the chunk itself, then merged in float64, chunk by chunk in order
# (Chan et al.). Chunk boundaries and merge order do not depend on the thread
# count, so results are bit-identical for any number of threads.

from cython.parallel cimport prange
from libc.math cimport sqrt, isfinite
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy
cimport numpy as cnp

from gncpu.kernel._openmp cimport GNCPU_HAVE_OPENMP, omp_get_max_threads

cnp.import_array()

cdef extern from "_cpu.h":
    int gncpu_cpu_level() noexcept nogil
    const char* GNCPU_VARIANT
    const char* GNCPU_CFLAGS
    const char* GNCPU_COMPILER

ctypedef fused real:
    float
    double

# Independent accumulators per sum: enough to fill 4 AVX-512 registers with
# float32 (8 with float64), so the adds pipeline instead of waiting on one
# dependency chain. Plain C arrays indexed by the inner loop: gcc vectorizes
# them without -ffast-math, and the summation order is fixed by the source,
# so every instruction-set variant gives the same sums.
cdef enum:
    LANES = 64
# 4096 float32 = 16 KiB: a chunk's second pass reads from L1.
cdef enum:
    CHUNK = 4096

# Activation codes shared with gncpu/functional.py.
ACT_NONE = 0

cdef struct Moments:
    double count
    double mean
    double m2      # sum of squared deviations from mean


cdef inline double sum_lanes(const real* acc) noexcept nogil:
    # Pairwise tree over the lanes, fixed order.
    cdef double part[LANES]
    cdef Py_ssize_t j, width = LANES
    for j in range(LANES):
        part[j] = acc[j]
    while width > 1:
        width //= 2
        for j in range(width):
            part[j] = part[j] + part[j + width]
    return part[0]


cdef inline Moments chunk_moments(const real* x, Py_ssize_t n) noexcept nogil:
    """Moments of x[0:n] (n <= CHUNK): a rough mean, then shifted sums about it.

    The second pass reads the chunk from L1. Centring on the chunk's own mean
    makes x - centre exact for data with a large common offset (both operands
    within a factor of two: Sterbenz), so no digits are lost to the offset.
    """
    cdef real acc[LANES]
    cdef real acc_d[LANES]
    cdef real acc_dd[LANES]
    cdef real centre, d
    cdef Py_ssize_t i, j, body = n - n % LANES
    cdef double s1, s2
    cdef Moments m
    for j in range(LANES):
        acc[j] = 0
        acc_d[j] = 0
        acc_dd[j] = 0
    for i in range(body // LANES):
        for j in range(LANES):
            acc[j] += x[i * LANES + j]
    for j in range(n - body):
        acc[j] += x[body + j]
    centre = <real>(sum_lanes(acc) / n)
    for i in range(body // LANES):
        for j in range(LANES):
            d = x[i * LANES + j] - centre
            acc_d[j] += d
            acc_dd[j] += d * d
    for j in range(n - body):
        d = x[body + j] - centre
        acc_d[j] += d
        acc_dd[j] += d * d
    s1 = sum_lanes(acc_d)
    s2 = sum_lanes(acc_dd)
    m.count = n
    m.mean = centre + s1 / n
    m.m2 = s2 - s1 * (s1 / n)   # s1 is small (centred): no cancellation
    if m.m2 < 0:
        m.m2 = 0
    return m


cdef inline void merge_moments(Moments* into, Moments b) noexcept nogil:
    """Chan's parallel merge of b into *into (float64)."""
    cdef double n = into.count + b.count
    cdef double delta = b.mean - into.mean
    if into.count == 0:
        into[0] = b
        return
    into.m2 = into.m2 + b.m2 + delta * delta * (into.count * b.count / n)
    into.mean = into.mean + delta * (b.count / n)
    into.count = n


cdef inline void exact_moments(const real* x, Py_ssize_t n, Moments* m) noexcept nogil:
    """Two-pass float64 moments: the fallback when the fast sums overflowed
    (|x| beyond ~1e19 in float32, where (x - centre)**2 is not representable)."""
    cdef double s = 0, ss = 0, d
    cdef Py_ssize_t i
    for i in range(n):
        s += x[i]
    s /= n
    for i in range(n):
        d = x[i] - s
        ss += d * d
    m.count = n
    m.mean = s
    m.m2 = ss


cdef inline void finish_stats(const real* group, Py_ssize_t length, Moments m, double eps,
                              double* mean, double* rstd) noexcept nogil:
    if isfinite(m.mean) and not isfinite(m.m2):
        # finite data whose squared deviations overflowed the working precision
        exact_moments(group, length, &m)
    mean[0] = m.mean
    rstd[0] = 1.0 / sqrt(m.m2 / m.count + eps)


cdef inline void group_moments(const real* group, Py_ssize_t length, Moments* m) noexcept nogil:
    cdef Py_ssize_t k, start
    m.count = 0
    m.mean = 0
    m.m2 = 0
    for k in range((length + CHUNK - 1) // CHUNK):
        start = k * CHUNK
        merge_moments(m, chunk_moments(group + start, min(CHUNK, length - start)))


cdef inline void apply_range(const real* x, real* y, Py_ssize_t start, Py_ssize_t stop,
                             Py_ssize_t hw, const real* weight, const real* bias,
                             double mean, double rstd, int activation) noexcept nogil:
    """y[i] = (x[i] - mean) * rstd * weight[c] + bias[c] for start <= i < stop.

    x, y point at the group's first element; weight, bias at its first channel
    (either may be NULL). The mean is split into a working-precision head and
    tail: x - head is exact near a large offset, and subtracting before
    scaling avoids x*a + b, which loses ~1e-3 at |x| ~ 1e4 in float32.
    """
    cdef real head = <real>mean
    cdef real tail = <real>(mean - <double>head)
    cdef real a, b
    cdef Py_ssize_t c, i, lo, hi
    for c in range(start // hw, (stop - 1) // hw + 1):
        lo = max(start, c * hw)
        hi = min(stop, (c + 1) * hw)
        a = <real>(rstd * weight[c]) if weight != NULL else <real>rstd
        b = bias[c] if bias != NULL else 0
        for i in range(lo, hi):
            y[i] = ((x[i] - head) - tail) * a + b


cdef inline void normalize_group(const real* x, real* y, Py_ssize_t length, Py_ssize_t hw,
                                 const real* weight, const real* bias, double eps,
                                 int activation) noexcept nogil:
    """Statistics then apply for one (sample, group), while it is in cache."""
    cdef Moments m
    cdef double mean, rstd
    group_moments(x, length, &m)
    finish_stats(x, length, m, eps, &mean, &rstd)
    apply_range(x, y, 0, length, hw, weight, bias, mean, rstd, activation)


cdef inline void chunk_moments_at(const real* x, Py_ssize_t k, Py_ssize_t chunks_per_group,
                                  Py_ssize_t length, Moments* out) noexcept nogil:
    cdef Py_ssize_t start = (k % chunks_per_group) * CHUNK
    out[k] = chunk_moments(x + (k // chunks_per_group) * length + start,
                           min(CHUNK, length - start))


cdef inline void merge_group(const real* x, Py_ssize_t p, Py_ssize_t chunks_per_group,
                             Py_ssize_t length, const Moments* parts, double eps,
                             double* means, double* rstds) noexcept nogil:
    cdef Moments m
    cdef Py_ssize_t k
    m.count = 0
    m.mean = 0
    m.m2 = 0
    for k in range(p * chunks_per_group, (p + 1) * chunks_per_group):
        merge_moments(&m, parts[k])
    finish_stats(x + p * length, length, m, eps, &means[p], &rstds[p])


cdef inline void apply_chunk_at(const real* x, real* y, Py_ssize_t k, Py_ssize_t chunks_per_group,
                                Py_ssize_t length, Py_ssize_t hw, Py_ssize_t groups,
                                Py_ssize_t channels_per_group, const real* weight,
                                const real* bias, const double* means, const double* rstds,
                                int activation) noexcept nogil:
    cdef Py_ssize_t p = k // chunks_per_group
    cdef Py_ssize_t start = (k % chunks_per_group) * CHUNK
    cdef Py_ssize_t first_channel = (p % groups) * channels_per_group
    apply_range(x + p * length, y + p * length, start, min(start + CHUNK, length), hw,
                weight + first_channel if weight != NULL else NULL,
                bias + first_channel if bias != NULL else NULL,
                means[p], rstds[p], activation)


cdef int run_nchw(const real* x, real* y, Py_ssize_t n, Py_ssize_t c, Py_ssize_t hw,
                  Py_ssize_t groups, const real* weight, const real* bias, double eps,
                  int activation, int threads) noexcept nogil:
    """Returns 0, or -1 if scratch memory could not be allocated."""
    cdef Py_ssize_t cpg = c // groups
    cdef Py_ssize_t length = cpg * hw
    cdef Py_ssize_t pairs = n * groups
    cdef Py_ssize_t chunks_per_group = (length + CHUNK - 1) // CHUNK
    cdef Py_ssize_t p, k, total
    cdef Moments* parts
    cdef double* means
    cdef double* rstds
    if pairs >= threads and (pairs % threads == 0 or pairs >= 8 * threads):
        # Enough (sample, group) pairs to balance: each thread finishes whole
        # groups, so the second read of a group hits its cache.
        for p in prange(pairs, num_threads=threads, schedule="static"):
            normalize_group(x + p * length, y + p * length, length, hw,
                            weight + (p % groups) * cpg if weight != NULL else NULL,
                            bias + (p % groups) * cpg if bias != NULL else NULL,
                            eps, activation)
        return 0
    # Few pairs for the threads (N=1, G=1 is LayerNorm over C x HW): split
    # groups into chunks. Moments per chunk in parallel, merge per group in
    # fixed order, then the apply per chunk in parallel. The static schedule
    # hands each thread the same chunks in both parallel loops.
    total = pairs * chunks_per_group
    parts = <Moments*>malloc(total * sizeof(Moments))
    means = <double*>malloc(pairs * sizeof(double))
    rstds = <double*>malloc(pairs * sizeof(double))
    if parts == NULL or means == NULL or rstds == NULL:
        free(parts)
        free(means)
        free(rstds)
        return -1
    for k in prange(total, num_threads=threads, schedule="static"):
        chunk_moments_at(x, k, chunks_per_group, length, parts)
    for p in range(pairs):
        merge_group(x, p, chunks_per_group, length, parts, eps, means, rstds)
    for k in prange(total, num_threads=threads, schedule="static"):
        apply_chunk_at(x, y, k, chunks_per_group, length, hw, groups, cpg, weight, bias,
                       means, rstds, activation)
    free(parts)
    free(means)
    free(rstds)
    return 0


cdef inline const void* data_or_null(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


def group_norm_nchw(cnp.ndarray x, cnp.ndarray out, object weight, object bias,
                    Py_ssize_t num_groups, double eps, int activation, int threads):
    """Normalize x (N, C, *spatial; C-contiguous float32/float64) into out.

    x     IN   C-contiguous, float32 or float64
    out   OUT  same shape and dtype, C-contiguous; may be x itself
    weight, bias  IN  None or C-contiguous (C,) arrays of x's dtype
    """
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1]
    cdef Py_ssize_t hw = 1
    cdef int rc = 0, dim
    for dim in range(2, x.ndim):
        hw *= x.shape[dim]
    if n * c * hw == 0:
        return out
    cdef void* xp = cnp.PyArray_DATA(x)
    cdef void* yp = cnp.PyArray_DATA(out)
    cdef const void* wp = data_or_null(weight)
    cdef const void* bp = data_or_null(bias)
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        with nogil:
            rc = run_nchw(<const float*>xp, <float*>yp, n, c, hw, num_groups,
                          <const float*>wp, <const float*>bp, eps, activation, threads)
    else:
        with nogil:
            rc = run_nchw(<const double*>xp, <double*>yp, n, c, hw, num_groups,
                          <const double*>wp, <const double*>bp, eps, activation, threads)
    if rc != 0:
        raise MemoryError("gncpu: could not allocate scratch memory for the group statistics")
    return out


cdef enum:
    COPY_BLOCK = 65536

cdef inline void copy_block(const char* src, char* dst, Py_ssize_t k, Py_ssize_t nbytes) noexcept nogil:
    cdef Py_ssize_t start = k * COPY_BLOCK
    memcpy(dst + start, src + start, min(COPY_BLOCK, nbytes - start))


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
