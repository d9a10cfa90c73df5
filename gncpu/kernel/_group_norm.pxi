# Group Normalization kernels: compiled once per instruction-set level (see
# setup.py); each _<level>.pyx includes this file.
#
# Callers (gncpu/functional.py) have validated everything: arrays are
# C-contiguous, of the kernel's dtype, shapes agree, num_groups divides C,
# outputs do not overlap inputs except where noted.
#
# Statistics. Moments (count, mean, M2) are computed per fixed block of
# elements in the working precision, about a centre taken from the block
# itself, then merged in float64 block by block in a fixed order (Chan et
# al.). Block boundaries and merge order do not depend on the thread count,
# so results are bit-identical for any number of threads.
#
# Layouts. NCHW: a (sample, group) is one contiguous run of (C/G)*HW
# elements, cut into CHUNK-element chunks. NHWC: a sample is S rows of C
# channels; blocks of rows are reduced per channel (vectorized over C),
# then channels merge into their group.
#
# Epilogue, fused into the apply loop: y = act((x - mean) * rstd * w + b),
# and optionally x is first replaced by x + skip + skip_bias (SkipGroupNorm),
# materialized in `buf` (the caller's sum output, or the output itself).

from cython.parallel cimport parallel, prange, threadid
from libc.math cimport sqrt, isfinite, exp, erfc, tanh, fabs, ldexp, ilogb
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

cdef enum:
    # Independent accumulators per sum: 4 AVX-512 registers of float32 (8 of
    # float64), so the adds pipeline instead of waiting on one dependency
    # chain. Plain C arrays indexed by the inner loop: gcc vectorizes them
    # without -ffast-math, and the summation order is fixed by the source, so
    # every instruction-set variant sums alike.
    LANES = 64
    # 4096 float32 = 16 KiB: a residual chunk's stats pass reads it from L1.
    CHUNK = 4096
    # NHWC geometry (see GroupsNHWC): a line is at least LINE elements; a
    # statistics block at least ROWS rows and about NHWC_BLOCK elements.
    LINE = 512
    ROWS = 64
    NHWC_BLOCK = 8192
    COPY_BLOCK = 65536

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


# ---------------------------------------------------------------- statistics

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


cdef inline double mean_of_8(double a, double b, double c, double d, double e, double f,
                            double g, double h) noexcept nogil:
    """A pairwise sum: exact when the 8 values are equal, so a constant group
    gets its value back as the centre, zero deviations, and exactly bias."""
    return (((a + b) + (c + d)) + ((e + f) + (g + h))) * 0.125


cdef inline Moments chunk_moments(const real* x, Py_ssize_t n) noexcept nogil:
    """Moments of x[0:n] (n <= CHUNK) in one pass of shifted sums.

    The centre is the mean of 8 samples spread over the chunk: close enough
    to the chunk mean that s2 - s1**2/n loses little, and x - centre is exact
    for data with a large common offset (both operands within a factor of
    two: Sterbenz), so no digits go to the offset.
    """
    cdef real acc_d[LANES]
    cdef real acc_dd[LANES]
    cdef real centre, d
    cdef Py_ssize_t i, j, body = n - n % LANES
    cdef double s1, s2, inv_n
    cdef Moments m
    centre = <real>(mean_of_8(x[0], x[n // 8], x[(2 * n) // 8], x[(3 * n) // 8],
                              x[(4 * n) // 8], x[(5 * n) // 8], x[(6 * n) // 8],
                              x[(7 * n) // 8]))
    for j in range(LANES):
        acc_d[j] = 0
        acc_dd[j] = 0
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
    inv_n = 1.0 / n
    m.count = n
    m.scale = 1
    m.mean = centre + s1 * inv_n
    m.m2 = max(s2 - s1 * (s1 * inv_n), 0.0)  # s1 is small (centred): little cancellation
    return m


cdef inline void merge_moments(Moments* into, Moments b) noexcept nogil:
    """Chan's parallel merge of b into *into (float64)."""
    cdef double n, delta
    if into.count == 0:
        into[0] = b
        return
    n = into.count + b.count
    delta = b.mean - into.mean
    into.m2 = into.m2 + b.m2 + delta * delta * (into.count * b.count / n)
    into.mean = into.mean + delta * (b.count / n)
    into.count = n


cdef inline void reset_moments(Moments* m) noexcept nogil:
    m.count = 0
    m.mean = 0
    m.m2 = 0
    m.scale = 1


cdef inline Moments combine_equal(const Moments* parts, Py_ssize_t k, Py_ssize_t stride) noexcept nogil:
    """Moments of k parts of equal count, parts[0], parts[stride], ...: the
    mean of the means, and M2 = sum of M2 + count * sum of the squared
    deviations of the means. Unlike k - 1 Chan merges it has no division in
    the loop (a sequential merge costs ~50 cycles of dependent divisions)."""
    cdef Py_ssize_t i
    cdef double base = parts[0].mean, shift_sum = 0, m2 = 0, spread = 0, mean, d
    cdef Moments m
    for i in range(k):  # shifted by the first mean: equal means give it back exactly
        shift_sum += parts[i * stride].mean - base
        m2 += parts[i * stride].m2
    mean = base + shift_sum / k
    for i in range(k):
        d = parts[i * stride].mean - mean
        spread += d * d
    m.count = parts[0].count * k
    m.scale = 1
    m.mean = mean
    m.m2 = m2 + parts[0].count * spread
    return m


cdef inline double inv_std(Moments m, double eps) noexcept nogil:
    if m.scale == 1:
        return 1.0 / sqrt(m.m2 / m.count + eps)
    return 1.0 / (m.scale * sqrt(m.m2 / m.count + eps / (m.scale * m.scale)))


cdef inline Moments exact_moments(const real* x, Py_ssize_t rows, Py_ssize_t width,
                                  Py_ssize_t stride) noexcept nogil:
    """Two-pass float64 moments of `rows` runs of `width` elements, `stride`
    apart: the fallback when the fast sums cannot be trusted (see
    needs_exact_moments). The data is divided by its largest magnitude (a
    power of two, so exactly) and M2 kept in units of that scale squared:
    float64 data beyond ~1e154 has squares beyond the float64 range."""
    cdef double s = 0, ss = 0, d, big = 0, scale = 1, inv
    cdef Py_ssize_t r, i, n = rows * width
    cdef Moments m
    for r in range(rows):
        for i in range(width):
            big = max(big, fabs(x[r * stride + i]))   # NaN is ignored here, caught below
    if big > 1e150 and isfinite(big):
        scale = ldexp(1.0, ilogb(big) + 1)
    inv = 1.0 / scale
    for r in range(rows):
        for i in range(width):
            s += x[r * stride + i] * inv / n
    for r in range(rows):
        for i in range(width):
            d = x[r * stride + i] * inv - s
            ss += d * d
    m.count = n
    m.mean = s * scale
    m.m2 = ss
    m.scale = scale
    return m


cdef inline bint needs_exact_moments(const real* x, Moments m, double eps) noexcept nogil:
    """True when the working-precision sums may be wrong: they overflowed
    (|x - centre| beyond ~1e19 in float32, or values near the float32
    maximum whose differences overflow), or the data has NaN/Inf (the float64
    pass then reproduces NaN); or, in float32, the variance is so small that
    squared deviations may have underflowed (|x - mean| below ~1e-19) and eps
    does not dominate it. Never true for ordinary data: it costs one more
    pass over the group."""
    if not (isfinite(m.mean) and isfinite(m.m2)):
        return True
    if real is float:
        return m.m2 < (1e-30 - eps) * m.count   # m2 / count + eps < 1e-30, without a division
    else:
        return False


# ---------------------------------------------------------------- epilogue

cdef inline real silu(real v) noexcept nogil:
    if real is float:
        return gn_silu_f32(v)
    else:
        return v / (1.0 + exp(-v))


cdef inline real gelu(real v) noexcept nogil:
    if real is float:
        return gn_gelu_f32(v)
    else:
        return 0.5 * v * erfc(-v * 0.70710678118654752440)


cdef inline real gelu_tanh(real v) noexcept nogil:
    if real is float:
        return gn_gelu_tanh_f32(v)
    else:
        return 0.5 * v * (1.0 + tanh(0.79788456080286535588 * (v + 0.044715 * v * v * v)))


cdef inline real relu(real v) noexcept nogil:
    return 0 if v < 0 else v  # NaN stays NaN


# The apply loops: one loop per activation, each a single expression, so
# every one vectorizes on its own and the activation's arithmetic overlaps
# the loads and stores of the same loop (a separate activation pass would
# serialize the memory-bound and the compute-bound work).

cdef inline Py_ssize_t to_alignment(const void* p, Py_ssize_t n, Py_ssize_t size) noexcept nogil:
    """Elements of `size` bytes from p to the next 64-byte boundary (0 for short runs).
    Large NumPy buffers start 16 bytes past one: without peeling, every
    vector store would straddle two cache lines."""
    if n < 256:  # short runs: the peeled head would cost more than the split stores
        return 0
    return <Py_ssize_t>(((64 - (<size_t>p) % 64) % 64) // size)


cdef inline void affine_scalar(const real* x, real* y, Py_ssize_t n, real head, real a, real b,
                               int activation) noexcept nogil:
    """y = act((x - head) * a + b) for one channel's run (NCHW), the stores
    aligned to 64 bytes after a short head."""
    cdef Py_ssize_t peel = to_alignment(y, n, sizeof(real))
    affine_scalar_run(x, y, peel, head, a, b, activation)
    affine_scalar_run(x + peel, y + peel, n - peel, head, a, b, activation)


cdef inline void affine_table(const real* x, real* y, Py_ssize_t n, const real* head,
                              const real* a, const real* b, int activation) noexcept nogil:
    """y = act((x - head) * a + b) along one row of channels (NHWC), with
    per-channel coefficients, the stores aligned to 64 bytes after a short head."""
    cdef Py_ssize_t peel = to_alignment(y, n, sizeof(real))
    affine_table_run(x, y, peel, head, a, b, activation)
    affine_table_run(x + peel, y + peel, n - peel, head + peel, a + peel, b + peel, activation)


cdef inline void affine_scalar_run(const real* x, real* y, Py_ssize_t n, real head, real a,
                                   real b, int activation) noexcept nogil:
    cdef Py_ssize_t i
    if activation == ACT_NONE:
        for i in range(n):
            y[i] = (x[i] - head) * a + b
    elif activation == ACT_SILU:
        for i in range(n):
            y[i] = silu((x[i] - head) * a + b)
    elif activation == ACT_RELU:
        for i in range(n):
            y[i] = relu((x[i] - head) * a + b)
    elif activation == ACT_GELU:
        for i in range(n):
            y[i] = gelu((x[i] - head) * a + b)
    else:
        for i in range(n):
            y[i] = gelu_tanh((x[i] - head) * a + b)


cdef inline void affine_table_run(const real* x, real* y, Py_ssize_t n, const real* head,
                                  const real* a, const real* b, int activation) noexcept nogil:
    cdef Py_ssize_t i
    if activation == ACT_NONE:
        for i in range(n):
            y[i] = (x[i] - head[i]) * a[i] + b[i]
    elif activation == ACT_SILU:
        for i in range(n):
            y[i] = silu((x[i] - head[i]) * a[i] + b[i])
    elif activation == ACT_RELU:
        for i in range(n):
            y[i] = relu((x[i] - head[i]) * a[i] + b[i])
    elif activation == ACT_GELU:
        for i in range(n):
            y[i] = gelu((x[i] - head[i]) * a[i] + b[i])
    else:
        for i in range(n):
            y[i] = gelu_tanh((x[i] - head[i]) * a[i] + b[i])


cdef inline bint affine_coefficients(double mean, double rstd, const real* weight,
                                     const real* bias, Py_ssize_t c, real* head, real* a,
                                     real* b) noexcept nogil:
    """Per-channel coefficients of y = (x - head) * a + b.

    The mean is split into a working-precision head and a tail: x - head is
    exact near a large offset, and subtracting before scaling avoids x*a + b,
    which loses ~1e-3 at |x| ~ 1e4 in float32. The tail (|tail| <=
    ulp(mean)/2) is folded into the shift b.

    Returns True if the scale is finite but not representable in the working
    precision (float32 data of subnormal spread with eps = 0: 1/std > 3.4e38);
    the caller then applies that channel with apply_exact.
    """
    cdef double scale = rstd * weight[c] if weight != NULL else rstd
    head[0] = <real>mean
    a[0] = <real>scale
    b[0] = <real>((bias[c] if bias != NULL else 0) - (mean - <double>head[0]) * scale)
    return isfinite(scale) and not isfinite(a[0])


cdef inline real activate_one(real v, int activation) noexcept nogil:
    if activation == ACT_SILU:
        return silu(v)
    if activation == ACT_RELU:
        return relu(v)
    if activation == ACT_GELU:
        return gelu(v)
    if activation == ACT_GELU_TANH:
        return gelu_tanh(v)
    return v


cdef inline void apply_exact(const real* x, real* y, Py_ssize_t n, double mean, double rstd,
                             const real* weight, const real* bias, Py_ssize_t c,
                             int activation) noexcept nogil:
    """y[i] = act((x[i] - mean) * rstd * weight[c] + bias[c]) in float64, for
    a channel whose scale overflows the working precision (rare: slow is fine)."""
    cdef double scale = rstd * weight[c] if weight != NULL else rstd
    cdef double shift_by = bias[c] if bias != NULL else 0
    cdef Py_ssize_t i
    for i in range(n):
        y[i] = activate_one(<real>((x[i] - mean) * scale + shift_by), activation)


# ---------------------------------------------------------------- NCHW

cdef inline void add_residual_range(const real* x, const real* skip, const real* skip_bias,
                                    real* dst, Py_ssize_t start, Py_ssize_t stop,
                                    Py_ssize_t hw) noexcept nogil:
    """dst[i] = x[i] + skip[i] + skip_bias[channel of i], start <= i < stop.
    Pointers at the group's first element / first channel; either addend may be NULL."""
    cdef Py_ssize_t c, i, lo, hi
    cdef real sb
    for c in range(start // hw, (stop - 1) // hw + 1):
        lo = max(start, c * hw)
        hi = min(stop, (c + 1) * hw)
        sb = skip_bias[c] if skip_bias != NULL else 0
        if skip != NULL:
            for i in range(lo, hi):
                dst[i] = (x[i] + skip[i]) + sb
        else:
            for i in range(lo, hi):
                dst[i] = x[i] + sb


cdef struct GroupsNCHW:
    # Geometry and operands shared by every work item of one NCHW call.
    Py_ssize_t hw, groups, channels_per_group, length, chunks_per_group
    double eps
    int activation


cdef inline Moments chunk_stats(const real* x, const real* skip, const real* skip_bias,
                                real* buf, Py_ssize_t start, Py_ssize_t stop,
                                Py_ssize_t hw) noexcept nogil:
    """Moments of one chunk of a group (pointers at the group's start). With
    a residual, x + skip + skip_bias is written to buf first and its moments
    taken while it is in L1."""
    if buf == NULL:
        return chunk_moments(x + start, stop - start)
    add_residual_range(x, skip, skip_bias, buf, start, stop, hw)
    return chunk_moments(buf + start, stop - start)


cdef inline void apply_range(const real* src, real* y, Py_ssize_t start, Py_ssize_t stop,
                             Py_ssize_t hw, const real* weight, const real* bias,
                             Moments m, double eps, int activation) noexcept nogil:
    """Normalize src[start:stop] of one group into y (pointers at the group's
    first element; weight and bias at its first channel, or NULL)."""
    cdef double rstd = inv_std(m, eps)
    cdef real head, a, b
    cdef Py_ssize_t c, lo, hi
    for c in range(start // hw, (stop - 1) // hw + 1):
        lo = max(start, c * hw)
        hi = min(stop, (c + 1) * hw)
        if affine_coefficients(m.mean, rstd, weight, bias, c, &head, &a, &b):
            apply_exact(src + lo, y + lo, hi - lo, m.mean, rstd, weight, bias, c, activation)
        else:
            affine_scalar(src + lo, y + lo, hi - lo, head, a, b, activation)


cdef inline const real* shift(const real* p, Py_ssize_t by) noexcept nogil:
    return p + by if p != NULL else NULL


cdef inline real* shift_mut(real* p, Py_ssize_t by) noexcept nogil:
    return p + by if p != NULL else NULL


cdef inline Moments finish_group(const real* src, Py_ssize_t length, Moments m,
                                 double eps) noexcept nogil:
    if needs_exact_moments(src, m, eps):
        return exact_moments(src, 1, length, length)
    return m


cdef inline void normalize_group(const real* x, real* y, const real* skip, real* buf,
                                 const real* weight, const real* bias, const real* skip_bias,
                                 Py_ssize_t p, GroupsNCHW* g) noexcept nogil:
    """Statistics then apply for (sample, group) pair p, while it is in cache."""
    cdef Py_ssize_t offset = p * g.length
    cdef Py_ssize_t first_channel = (p % g.groups) * g.channels_per_group
    cdef Py_ssize_t k, start
    cdef Moments m
    cdef const real* src = x + offset
    if buf != NULL:
        src = buf + offset
    reset_moments(&m)
    for k in range(g.chunks_per_group):
        start = k * CHUNK
        merge_moments(&m, chunk_stats(x + offset, shift(skip, offset),
                                      shift(skip_bias, first_channel), shift_mut(buf, offset),
                                      start, min(start + CHUNK, g.length), g.hw))
    m = finish_group(src, g.length, m, g.eps)
    # Apply the chunks last-read first: a group larger than L2 then still
    # finds its most recent ~L2 worth of chunks there.
    for k in range(g.chunks_per_group - 1, -1, -1):
        start = k * CHUNK
        apply_range(src, y + offset, start, min(start + CHUNK, g.length), g.hw,
                    shift(weight, first_channel), shift(bias, first_channel), m, g.eps,
                    g.activation)


cdef inline Moments group_moments_from_chunks(const real* src, Py_ssize_t p, GroupsNCHW* g,
                                              const Moments* parts) noexcept nogil:
    """Pair p's moments: its chunks merged in chunk order, as normalize_group
    merges them (so both plans give the same bits)."""
    cdef Py_ssize_t k, first = p * g.chunks_per_group
    cdef Moments m
    reset_moments(&m)
    for k in range(first, first + g.chunks_per_group):
        merge_moments(&m, parts[k])
    return finish_group(src + p * g.length, g.length, m, g.eps)


cdef inline Py_ssize_t share_start(Py_ssize_t total, Py_ssize_t t, Py_ssize_t threads) noexcept nogil:
    """First item of thread t's contiguous share of `total` items."""
    return total * t // threads


cdef inline void split_groups_thread(const real* x, real* y, const real* skip, real* buf,
                                     const real* weight, const real* bias,
                                     const real* skip_bias, Py_ssize_t t, Py_ssize_t threads,
                                     GroupsNCHW* g, Py_ssize_t pairs,
                                     Moments* parts) noexcept nogil:
    """Thread t's part of the split plan: moments of its share of all chunks;
    a barrier; then the apply of the same share, last-read chunk first (still
    in L2), each thread merging the moments of the groups it touches itself."""
    cdef Py_ssize_t total = pairs * g.chunks_per_group
    cdef Py_ssize_t first = share_start(total, t, threads)
    cdef Py_ssize_t stop = share_start(total, t + 1, threads)
    cdef Py_ssize_t k, p, start, group = -1
    cdef Py_ssize_t offset, first_channel
    cdef const real* src = x
    cdef Moments m
    if buf != NULL:
        src = buf
    for k in range(first, stop):
        p = k // g.chunks_per_group
        start = (k % g.chunks_per_group) * CHUNK
        offset = p * g.length
        parts[k] = chunk_stats(x + offset, shift(skip, offset),
                               shift(skip_bias, (p % g.groups) * g.channels_per_group),
                               shift_mut(buf, offset), start, min(start + CHUNK, g.length), g.hw)
    gncpu_barrier()
    for k in range(stop - 1, first - 1, -1):
        p = k // g.chunks_per_group
        if p != group:
            m = group_moments_from_chunks(src, p, g, parts)
            group = p
        start = (k % g.chunks_per_group) * CHUNK
        first_channel = (p % g.groups) * g.channels_per_group
        apply_range(src + p * g.length, y + p * g.length, start, min(start + CHUNK, g.length),
                    g.hw, shift(weight, first_channel), shift(bias, first_channel), m, g.eps,
                    g.activation)


cdef int run_nchw(const real* x, real* y, const real* skip, real* buf, const real* weight,
                  const real* bias, const real* skip_bias, Py_ssize_t n, Py_ssize_t c,
                  GroupsNCHW* g, int threads) noexcept nogil:
    """Returns 0, or -1 if scratch memory could not be allocated."""
    cdef Py_ssize_t pairs = n * g.groups
    cdef Py_ssize_t p
    cdef Moments* parts
    if threads == 1:  # no parallel region at all: opening one costs ~1 us
        for p in range(pairs):
            normalize_group(x, y, skip, buf, weight, bias, skip_bias, p, g)
        return 0
    if pairs >= threads and (pairs % threads == 0 or pairs >= 8 * threads):
        # Enough (sample, group) pairs to balance: each thread finishes whole
        # groups, so the second read of a group hits its cache.
        for p in prange(pairs, num_threads=threads, schedule="static"):
            normalize_group(x, y, skip, buf, weight, bias, skip_bias, p, g)
        return 0
    # Few pairs for the threads (N=1, G=1 is LayerNorm over C x HW): split
    # groups into chunks across threads, in one parallel region (see
    # split_groups_thread). Chunk boundaries and merge order are those of
    # normalize_group: the same bits for any thread count.
    parts = <Moments*>malloc(pairs * g.chunks_per_group * sizeof(Moments))
    if parts == NULL:
        return -1
    with parallel(num_threads=threads):
        split_groups_thread(x, y, skip, buf, weight, bias, skip_bias, threadid(),
                            omp_get_num_threads(), g, pairs, parts)
    free(parts)
    return 0


# ---------------------------------------------------------------- NHWC

cdef struct GroupsNHWC:
    Py_ssize_t rows, channels, groups, channels_per_group
    # Rows are handled `line_rows` at a time as one line of line_rows * C
    # lanes (lane j holds channel j % C): a short row (C = 32) would
    # otherwise pay a loop's overhead for two vectors of work.
    Py_ssize_t line_rows, line
    # Statistics blocks: block_rows rows (a multiple of line_rows, >= 64 and
    # ~8192 elements), so per-lane sums stay short and per-block work is big.
    Py_ssize_t block_rows, blocks_per_sample
    double eps
    int activation
    # Per (sample, group): 1 if a channel's scale overflows the working
    # precision (see affine_coefficients), and the group's mean and rstd.
    unsigned char* exact
    double* stats


cdef inline void nhwc_geometry(GroupsNHWC* g, Py_ssize_t rows, Py_ssize_t channels,
                               Py_ssize_t groups) noexcept nogil:
    g.rows = rows
    g.channels = channels
    g.groups = groups
    g.channels_per_group = channels // groups
    g.line_rows = max(1, LINE // channels)
    g.line = g.line_rows * channels
    g.block_rows = max(<Py_ssize_t>ROWS, (NHWC_BLOCK // channels) // g.line_rows * g.line_rows)
    g.block_rows = (g.block_rows + g.line_rows - 1) // g.line_rows * g.line_rows
    g.blocks_per_sample = (rows + g.block_rows - 1) // g.block_rows


cdef inline void lane_sums(const real* x, Py_ssize_t n, const real* centre, real* acc_d,
                           real* acc_dd) noexcept nogil:
    """acc_d[j] += x[j] - centre[j], acc_dd[j] += (x[j] - centre[j])**2, j < n."""
    cdef Py_ssize_t j
    cdef real d
    for j in range(n):
        d = x[j] - centre[j]
        acc_d[j] += d
        acc_dd[j] += d * d


cdef inline void lane_sums2(const real* x, const real* x2, Py_ssize_t n, const real* centre,
                            real* acc_d, real* acc_dd) noexcept nogil:
    """lane_sums over two lines at once: half the accumulator loads and stores."""
    cdef Py_ssize_t j
    cdef real d, e
    for j in range(n):
        d = x[j] - centre[j]
        e = x2[j] - centre[j]
        acc_d[j] += d + e
        acc_dd[j] += d * d + e * e


cdef inline void channel_sums(const real* x, Py_ssize_t rows, GroupsNHWC* g, real* centre,
                              real* acc_d, real* acc_dd) noexcept nogil:
    """Per-channel shifted sums over `rows` contiguous rows, into the first C
    entries of acc_d / acc_dd (each g.line long; centre too). Centred per
    channel on the mean of 8 rows spread over the block. Rows are walked in
    memory order, a line (line_rows rows) at a time; the line-long
    accumulators stay in L1 and are folded to C channels at the end."""
    cdef Py_ssize_t nc = g.channels, width = g.line
    cdef Py_ssize_t lines = rows // g.line_rows
    cdef Py_ssize_t r, k, j, lanes
    cdef const real* row
    cdef real local[LANES]   # a local array cannot alias x: this loop vectorizes
    # offsets of the 8 rows spread over the block
    cdef Py_ssize_t r0 = 0, r1 = (rows // 8) * nc, r2 = ((2 * rows) // 8) * nc
    cdef Py_ssize_t r3 = ((3 * rows) // 8) * nc, r4 = ((4 * rows) // 8) * nc
    cdef Py_ssize_t r5 = ((5 * rows) // 8) * nc, r6 = ((6 * rows) // 8) * nc
    cdef Py_ssize_t r7 = ((7 * rows) // 8) * nc
    for k in range((nc + LANES - 1) // LANES):
        lanes = min(<Py_ssize_t>LANES, nc - k * LANES)
        row = x + k * LANES
        for j in range(LANES):  # the 8 spread rows summed pairwise (exact if equal)
            local[j] = ((((row[r0 + j] + row[r1 + j]) + (row[r2 + j] + row[r3 + j]))
                         + ((row[r4 + j] + row[r5 + j]) + (row[r6 + j] + row[r7 + j])))
                        * <real>0.125) if j < lanes else 0
        for j in range(lanes):
            centre[k * LANES + j] = local[j]
    for j in range(nc, width):
        centre[j] = centre[j - nc]
    for j in range(width):
        acc_d[j] = 0
        acc_dd[j] = 0
    for k in range(lines // 2):
        lane_sums2(x + 2 * k * width, x + (2 * k + 1) * width, width, centre, acc_d, acc_dd)
    if lines % 2:
        lane_sums(x + (lines - 1) * width, width, centre, acc_d, acc_dd)
    lane_sums(x + lines * width, (rows - lines * g.line_rows) * nc, centre, acc_d, acc_dd)
    for r in range(1, g.line_rows):  # fold the line's replicas, in order
        for j in range(nc):
            acc_d[j] += acc_d[r * nc + j]
            acc_dd[j] += acc_dd[r * nc + j]


cdef inline void add_residual_rows(const real* x, const real* skip, const real* skip_bias,
                                   real* dst, Py_ssize_t rows, Py_ssize_t nc) noexcept nogil:
    """dst = x + skip + skip_bias over `rows` contiguous rows of nc channels."""
    cdef Py_ssize_t r, ch
    for r in range(rows):
        for ch in range(nc):
            dst[r * nc + ch] = (x[r * nc + ch] + (skip[r * nc + ch] if skip != NULL else 0)) \
                               + (skip_bias[ch] if skip_bias != NULL else 0)


cdef inline int block_stats(const real* x, const real* skip, const real* skip_bias, real* buf,
                            Py_ssize_t b, GroupsNHWC* g, Moments* parts) noexcept nogil:
    """Moments of each group over one block of rows of one sample, into
    parts[b * groups + group]: per-channel shifted sums, then each group's
    channels combined. Returns -1 if out of memory."""
    cdef Py_ssize_t nc = g.channels
    cdef Py_ssize_t first = (b % g.blocks_per_sample) * g.block_rows
    cdef Py_ssize_t rows = min(g.block_rows, g.rows - first)
    cdef Py_ssize_t offset = ((b // g.blocks_per_sample) * g.rows + first) * nc
    cdef Py_ssize_t k, ch
    cdef real* sums = <real*>malloc(3 * g.line * sizeof(real))
    cdef Moments* channel = <Moments*>malloc(nc * sizeof(Moments))
    cdef real* centre = sums
    cdef real* acc_d = sums + g.line
    cdef real* acc_dd = sums + 2 * g.line
    if sums == NULL or channel == NULL:
        free(sums)
        free(channel)
        return -1
    if buf != NULL:
        add_residual_rows(x + offset, shift(skip, offset), skip_bias, buf + offset, rows, nc)
        x = buf
    channel_sums(x + offset, rows, g, centre, acc_d, acc_dd)
    for ch in range(nc):
        channel[ch].count = rows
        channel[ch].scale = 1
        channel[ch].mean = centre[ch] + <double>acc_d[ch] / rows
        channel[ch].m2 = max(<double>acc_dd[ch] - <double>acc_d[ch] * (<double>acc_d[ch] / rows), 0.0)
    for k in range(g.groups):
        parts[b * g.groups + k] = combine_equal(channel + k * g.channels_per_group,
                                                g.channels_per_group, 1)
    free(sums)
    free(channel)
    return 0


cdef inline void merge_blocks_at(const real* src, Py_ssize_t p, GroupsNHWC* g, Moments* parts,
                                 const real* weight, const real* bias, real* table) noexcept nogil:
    """Merge the blocks of (sample, group) pair p in block order; write its
    channels' head / a / b into table[(n * 3 + {0,1,2}) * line + lane], for
    every lane of the line that holds one of its channels."""
    cdef Py_ssize_t n = p // g.groups
    cdef Py_ssize_t k = p % g.groups
    cdef Py_ssize_t blk, ch
    cdef Moments m
    cdef double rstd
    cdef real* head = table + (n * 3) * g.line
    cdef real* a = head + g.line
    cdef real* b = a + g.line
    cdef Py_ssize_t r, lane
    cdef Py_ssize_t full = g.rows // g.block_rows   # blocks of exactly block_rows rows
    cdef const Moments* first = parts + (n * g.blocks_per_sample) * g.groups + k
    reset_moments(&m)
    if full > 0:
        m = combine_equal(first, full, g.groups)
    if full < g.blocks_per_sample:
        merge_moments(&m, first[full * g.groups])
    if needs_exact_moments(src, m, g.eps):
        m = exact_moments(src + n * g.rows * g.channels + k * g.channels_per_group, g.rows,
                          g.channels_per_group, g.channels)
    rstd = inv_std(m, g.eps)
    g.exact[p] = 0
    g.stats[2 * p] = m.mean
    g.stats[2 * p + 1] = rstd
    for ch in range(k * g.channels_per_group, (k + 1) * g.channels_per_group):
        if affine_coefficients(m.mean, rstd, weight, bias, ch, &head[ch], &a[ch], &b[ch]):
            g.exact[p] = 1
        for r in range(1, g.line_rows):
            lane = r * g.channels + ch
            head[lane] = head[ch]
            a[lane] = a[ch]
            b[lane] = b[ch]


cdef inline void apply_block(const real* src, real* y, const real* weight, const real* bias,
                             Py_ssize_t b, GroupsNHWC* g, const real* table) noexcept nogil:
    """Normalize one block of rows in memory order, a line at a time, with
    the sample's per-lane coefficients (3 lines in `table`, L1-resident)."""
    cdef Py_ssize_t n = b // g.blocks_per_sample
    cdef Py_ssize_t first = (b % g.blocks_per_sample) * g.block_rows
    cdef Py_ssize_t stop = min(first + g.block_rows, g.rows)
    cdef Py_ssize_t k, r, offset
    cdef const real* head = table + (n * 3) * g.line
    for k in range(g.groups):
        if g.exact[n * g.groups + k]:
            apply_block_by_group(src, y, weight, bias, n, first, stop, g, head)
            return
    for k in range((stop - first + g.line_rows - 1) // g.line_rows):
        r = first + k * g.line_rows
        offset = (n * g.rows + r) * g.channels
        affine_table(src + offset, y + offset, min(g.line_rows, stop - r) * g.channels, head,
                     head + g.line, head + 2 * g.line, g.activation)


cdef inline void apply_block_by_group(const real* src, real* y, const real* weight,
                                      const real* bias, Py_ssize_t n, Py_ssize_t first,
                                      Py_ssize_t stop, GroupsNHWC* g,
                                      const real* head) noexcept nogil:
    """apply_block for a sample with a group whose scale overflows the
    working precision: row by row, group by group, those groups in float64."""
    cdef Py_ssize_t r, k, p, ch, offset
    cdef Py_ssize_t cpg = g.channels_per_group
    for r in range(first, stop):
        for k in range(g.groups):
            p = n * g.groups + k
            ch = k * cpg
            offset = (n * g.rows + r) * g.channels + ch
            if g.exact[p]:
                for ch in range(k * cpg, (k + 1) * cpg):
                    apply_exact(src + offset - k * cpg + ch, y + offset - k * cpg + ch, 1,
                                g.stats[2 * p], g.stats[2 * p + 1], weight, bias, ch,
                                g.activation)
            else:
                affine_table(src + offset, y + offset, cpg, head + ch, head + g.line + ch,
                             head + 2 * g.line + ch, g.activation)


cdef inline void nhwc_thread(const real* x, real* y, const real* skip, real* buf,
                             const real* weight, const real* bias, const real* skip_bias,
                             Py_ssize_t t, Py_ssize_t threads, Py_ssize_t n, GroupsNHWC* g,
                             Moments* parts, real* table, int* failed) noexcept nogil:
    """Thread t's part of the NHWC kernel, in one parallel region: moments of
    its share of the (sample, row block)s; barrier; merges of its share of
    the (sample, group) pairs into the coefficient table; barrier; the apply
    of its share of blocks, last-read first (still in L2). *failed (shared)
    is set if scratch memory ran out; every thread then stops after the
    first barrier."""
    cdef Py_ssize_t blocks = n * g.blocks_per_sample
    cdef Py_ssize_t b, p
    cdef const real* src = x
    if buf != NULL:
        src = buf
    for b in range(share_start(blocks, t, threads), share_start(blocks, t + 1, threads)):
        if block_stats(x, skip, skip_bias, buf, b, g, parts) != 0:
            failed[0] = 1
            break
    gncpu_barrier()
    if failed[0]:
        return
    for p in range(share_start(n * g.groups, t, threads), share_start(n * g.groups, t + 1, threads)):
        merge_blocks_at(src, p, g, parts, weight, bias, table)
    gncpu_barrier()
    for b in range(share_start(blocks, t + 1, threads) - 1, share_start(blocks, t, threads) - 1, -1):
        apply_block(src, y, weight, bias, b, g, table)


cdef int run_nhwc(const real* x, real* y, const real* skip, real* buf, const real* weight,
                  const real* bias, const real* skip_bias, Py_ssize_t n, GroupsNHWC* g,
                  int threads) noexcept nogil:
    """Returns 0, or -1 if out of memory. Blocks and merge order do not
    depend on the thread count."""
    cdef int failed = 0
    cdef Moments* parts = <Moments*>malloc(n * g.blocks_per_sample * g.groups * sizeof(Moments))
    cdef real* table = <real*>malloc(n * 3 * g.line * sizeof(real))
    g.exact = <unsigned char*>malloc(n * g.groups)
    g.stats = <double*>malloc(n * g.groups * 2 * sizeof(double))
    if parts != NULL and table != NULL and g.exact != NULL and g.stats != NULL:
        if threads == 1:  # no parallel region at all: opening one costs ~1 us
            nhwc_thread(x, y, skip, buf, weight, bias, skip_bias, 0, 1, n, g, parts, table,
                        &failed)
        else:
            with parallel(num_threads=threads):
                nhwc_thread(x, y, skip, buf, weight, bias, skip_bias, threadid(),
                            omp_get_num_threads(), n, g, parts, table, &failed)
    else:
        failed = 1
    free(parts)
    free(table)
    free(g.exact)
    free(g.stats)
    return -1 if failed else 0


# ---------------------------------------------------------------- Python entry

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
    cdef GroupsNCHW nchw
    cdef GroupsNHWC nhwc
    if x.size == 0:
        return out
    if channels_last:
        nhwc_geometry(&nhwc, spatial, c, num_groups)
        nhwc.eps = eps
        nhwc.activation = activation
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
