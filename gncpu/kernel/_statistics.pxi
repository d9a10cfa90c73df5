# Statistics: the moments (count, mean, M2) of a block of elements, their
# merges, and the exact float64 fallback. Both layout plans (_nchw.pxi,
# _nhwc.pxi) reduce through these, so the accuracy argument lives in one
# place.
#
# Moments are computed per fixed block of elements in the working precision,
# about a centre taken from the block itself, then merged in float64 block by
# block in a fixed order (Chan et al.). Block boundaries and merge order do
# not depend on the thread count, so results are bit-identical for any number
# of threads.

cdef extern from "_sums.h":
    # s1 = sum(x - centre), s2 = sum((x - centre)**2) over x[0:n], in the
    # variant's lanes folded pairwise (see _sums.h).
    void shifted_sums_f32 "gn_shifted_sums_f32"(const float* x, Py_ssize_t n, float centre,
                                                 double* s1, double* s2) noexcept nogil
    void shifted_sums_f64 "gn_shifted_sums_f64"(const double* x, Py_ssize_t n, double centre,
                                                 double* s1, double* s2) noexcept nogil
    # the mean of x's first 64 elements (fewer in a shorter chunk), pairwise
    double leading_mean_f32 "gn_leading_mean_f32"(const float* x, Py_ssize_t n) noexcept nogil
    double leading_mean_f64 "gn_leading_mean_f64"(const double* x, Py_ssize_t n) noexcept nogil


cdef inline Moments chunk_moments(const real* x, Py_ssize_t n) noexcept nogil:
    """Moments of x[0:n] (n <= CHUNK) in one pass of shifted sums.

    The centre is the mean of the chunk's first 64 elements (a pairwise sum:
    a constant chunk gets its value back exactly, so zero deviations and
    exactly bias): x - centre is exact near a large common offset (both
    operands within a factor of two: Sterbenz), so no digits go to the
    offset. The stream reads those elements first anyway. Samples spread
    over the chunk were cache misses ahead of the stream that the sums
    waited for: 12-15% of the whole call on cold inputs (Zen 4).

    The centre's distance D from the chunk's mean costs accuracy twice: the
    cancellation in s2 - s1**2/n, and the lanes' partial sums drifting by D
    per element, whose rounding then adds up (a centre 0.63 std off gave
    4x the float32 error of one 0.07 off). When D is over a quarter of the
    standard deviation (a chunk starting with outliers, channels of
    different means) the sums are taken again about the mean just found,
    from L1 (16 KiB).
    """
    cdef real centre
    cdef double s1, s2, inv_n = 1.0 / n, m2
    cdef Moments m
    if real is float:
        centre = <real>leading_mean_f32(x, n)
    else:
        centre = <real>leading_mean_f64(x, n)
    shifted_sums(x, n, centre, &s1, &s2)
    m2 = s2 - s1 * (s1 * inv_n)
    if 16 * (s1 * (s1 * inv_n)) > m2:  # n D**2 > M2 / 16: D > std / 4 (False for NaN)
        centre = <real>(centre + s1 * inv_n)
        shifted_sums(x, n, centre, &s1, &s2)
        m2 = s2 - s1 * (s1 * inv_n)
    m.count = n
    m.scale = 1
    m.mean = centre + s1 * inv_n
    m.m2 = max(m2, 0.0)
    return m


cdef inline void shifted_sums(const real* x, Py_ssize_t n, real centre, double* s1,
                              double* s2) noexcept nogil:
    if real is float:
        shifted_sums_f32(x, n, centre, s1, s2)
    else:
        shifted_sums_f64(x, n, centre, s1, s2)


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
