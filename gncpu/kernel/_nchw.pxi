# The NCHW plan: a (sample, group) is one contiguous run of (C/G)*HW
# elements, cut into CHUNK-element chunks. Each thread normalizes whole groups
# (statistics, then apply while the group is in cache) when the groups balance
# across the threads; otherwise the groups are split into chunks across the
# threads (split_groups_thread), with the same chunk boundaries and merge
# order, so the same bits. Entry: run_nchw.

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
    # Store y past the cache (non-temporal, see _stream.h): set by the entry
    # point when the call's traffic would not fit in the last-level cache.
    bint stream


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


cdef extern from "_runs.h":
    # y = (x - head) * a[k] + b[k] over consecutive short channel runs, as one
    # flat vector loop (see _runs.h); GNCPU_HAVE_VECTOR_RUNS is 0 without
    # GCC vector extensions.
    const bint GNCPU_HAVE_VECTOR_RUNS
    void affine_runs_f32 "gn_affine_runs_f32"(const float* x, float* y, Py_ssize_t n,
                                               Py_ssize_t first, Py_ssize_t hw, float head,
                                               const float* a, const float* b) noexcept nogil
    void affine_runs_f64 "gn_affine_runs_f64"(const double* x, double* y, Py_ssize_t n,
                                               Py_ssize_t first, Py_ssize_t hw, double head,
                                               const double* a, const double* b) noexcept nogil


cdef inline void apply_range(const real* src, real* y, Py_ssize_t start, Py_ssize_t stop,
                             Py_ssize_t hw, const real* weight, const real* bias,
                             Moments m, double eps, int activation, bint stream,
                             Py_ssize_t ahead) noexcept nogil:
    """Normalize src[start:stop] of one group into y (pointers at the group's
    first element; weight and bias at its first channel, or NULL). stream
    and ahead: see own_loop (the caller fences)."""
    cdef double rstd = inv_std(m, eps)
    cdef real head, a, b
    cdef Py_ssize_t c, lo, hi
    if SHORT_RUN_MIN <= hw < SHORT_RUN_MAX and activation == ACT_NONE and GNCPU_HAVE_VECTOR_RUNS:
        if apply_short_runs(src, y, start, stop, hw, weight, bias, m.mean, rstd):
            return
    for c in range(start // hw, (stop - 1) // hw + 1):
        lo = max(start, c * hw)
        hi = min(stop, (c + 1) * hw)
        if affine_coefficients(m.mean, rstd, weight, bias, c, &head, &a, &b):
            apply_exact(src + lo, y + lo, hi - lo, m.mean, rstd, weight, bias, c, activation)
        else:
            affine_scalar(src + lo, y + lo, hi - lo, head, a, b, activation, stream, ahead)


cdef inline bint apply_short_runs(const real* src, real* y, Py_ssize_t start, Py_ssize_t stop,
                                  Py_ssize_t hw, const real* weight, const real* bias,
                                  double mean, double rstd) noexcept nogil:
    """apply_range without activation for short channel runs: the chunk's
    channel coefficients into a small table, then one flat vector loop over
    the chunk (a per-channel loop's head and tail cost more than its 49-64
    elements of work). Same coefficients, same bits. Returns False, having
    written nothing, if a channel needs apply_exact."""
    cdef real a[RUN_TABLE]
    cdef real b[RUN_TABLE]
    cdef real head = <real>mean   # what affine_coefficients sets it to
    cdef Py_ssize_t k, first_channel = start // hw
    cdef bint exact = False
    for k in range((stop - 1) // hw + 1 - first_channel):
        exact |= affine_coefficients(mean, rstd, weight, bias, first_channel + k, &head, &a[k],
                                     &b[k])
    if exact:
        return False
    if real is float:
        affine_runs_f32(src + start, y + start, stop - start, (first_channel + 1) * hw - start,
                        hw, head, a, b)
    else:
        affine_runs_f64(src + start, y + start, stop - start, (first_channel + 1) * hw - start,
                        hw, head, a, b)
    return True


cdef inline Moments finish_group(const real* src, Py_ssize_t length, Moments m,
                                 double eps) noexcept nogil:
    if needs_exact_moments(src, m, eps):
        return exact_moments(src, 1, length, length)
    return m


cdef inline void normalize_group(const real* x, real* y, const real* skip, real* buf,
                                 const real* weight, const real* bias, const real* skip_bias,
                                 Py_ssize_t p, GroupsNCHW* g, bint next_is_mine) noexcept nogil:
    """Statistics then apply for (sample, group) pair p, while it is in cache.
    next_is_mine: this thread normalizes pair p + 1 next; a compute-bound
    apply (a fused intrinsics activation) then prefetches it into L2 for the
    statistics, when both groups fit there (see gn_affine_act_f32). Measured
    0.79-0.90 of the time with SiLU on SD shapes (Zen 4, avx512)."""
    cdef Py_ssize_t offset = p * g.length
    cdef Py_ssize_t first_channel = (p % g.groups) * g.channels_per_group
    cdef Py_ssize_t k, start
    cdef Py_ssize_t ahead = 0
    cdef Moments m
    cdef const real* src = x + offset
    if (next_is_mine and buf == NULL and vector_act(g.activation) and real is float
            and 2 * g.length * sizeof(real) <= PREFETCH_GROUP_BYTES):
        ahead = g.length
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
                    g.activation, g.stream, ahead)


cdef inline void normalize_share(const real* x, real* y, const real* skip, real* buf,
                                 const real* weight, const real* bias, const real* skip_bias,
                                 Py_ssize_t t, Py_ssize_t threads, Py_ssize_t pairs,
                                 GroupsNCHW* g) noexcept nogil:
    """Thread t's contiguous share of the pairs, one whole group after another."""
    cdef Py_ssize_t p, stop = share_start(pairs, t + 1, threads)
    for p in range(share_start(pairs, t, threads), stop):
        normalize_group(x, y, skip, buf, weight, bias, skip_bias, p, g, p + 1 < stop)
    if g.stream:
        store_fence()


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
                    g.activation, g.stream, 0)
    if g.stream:
        store_fence()


cdef int run_nchw(const real* x, real* y, const real* skip, real* buf, const real* weight,
                  const real* bias, const real* skip_bias, Py_ssize_t n, Py_ssize_t c,
                  GroupsNCHW* g, int threads) noexcept nogil:
    """Returns 0, or -1 if scratch memory could not be allocated."""
    cdef Py_ssize_t pairs = n * g.groups
    cdef Moments* parts
    if threads == 1:  # no parallel region at all: opening one costs ~1 us
        normalize_share(x, y, skip, buf, weight, bias, skip_bias, 0, 1, pairs, g)
        return 0
    if pairs >= threads and (pairs % threads == 0 or pairs >= 8 * threads):
        # Enough (sample, group) pairs to balance: each thread finishes whole
        # groups, a contiguous share of them, so the second read of a group
        # hits its cache.
        with parallel(num_threads=threads):
            normalize_share(x, y, skip, buf, weight, bias, skip_bias, threadid(),
                            omp_get_num_threads(), pairs, g)
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
