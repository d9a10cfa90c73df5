# Apply: the activations and the affine loops that write
# y = act((x - mean) * rstd * w + b), one channel's run at a time (NCHW) or a
# row of channels with per-channel coefficients (NHWC), plus the float64 path
# for a scale the working precision cannot hold. Separate from the plans
# because both layouts share these loops, and from the statistics because
# this is the compute-bound half of the work (the activations) where the
# statistics are the memory-bound half.
#
# With a residual (SkipGroupNorm), x is first replaced by x + skip + skip_bias,
# materialized in `buf` (the caller's sum output, or the output itself); the
# plans do that before the statistics, so these loops read `buf`.

cdef extern from "_vecact.h":
    # float32 SiLU / GELU-tanh / GELU applies in AVX2 / AVX-512 intrinsics
    # (see _vecact.h); 0 in the baseline variant, which keeps the loops below.
    const bint GNCPU_HAVE_VECTOR_ACT
    enum: GN_VECTOR_SILU, GN_VECTOR_GELU_TANH, GN_VECTOR_GELU
    void gn_affine_act_f32(const float* x, float* y, Py_ssize_t n, const float* head,
                           const float* a, const float* b, Py_ssize_t step, int kind,
                           int stream, Py_ssize_t ahead) noexcept nogil


cdef extern from "_stream.h":
    # y = (x - head) * a + b with non-temporal stores, and the fence each
    # streaming thread ends with (see _stream.h); GNCPU_HAVE_STREAM is 0 on
    # CPUs without them.
    const bint GNCPU_HAVE_STREAM
    const bint GNCPU_STREAM_ROWS
    void affine_stream_f32 "gn_affine_stream_f32"(const float* x, float* y, Py_ssize_t n,
                                                   const float* head, const float* a,
                                                   const float* b, Py_ssize_t step) noexcept nogil
    void affine_stream_f64 "gn_affine_stream_f64"(const double* x, double* y, Py_ssize_t n,
                                                   const double* head, const double* a,
                                                   const double* b, Py_ssize_t step) noexcept nogil
    # the same over n elements with per-lane tables of period `line` (NHWC),
    # each padded with its first lanes repeated (see GroupsNHWC.table_line)
    void affine_stream_rows_f32 "gn_affine_stream_rows_f32"(const float* x, float* y, Py_ssize_t n,
                                                             Py_ssize_t line, const float* head,
                                                             const float* a,
                                                             const float* b) noexcept nogil
    void affine_stream_rows_f64 "gn_affine_stream_rows_f64"(const double* x, double* y,
                                                             Py_ssize_t n, Py_ssize_t line,
                                                             const double* head, const double* a,
                                                             const double* b) noexcept nogil
    void store_fence "gn_store_fence"() noexcept nogil


cdef inline bint vector_act(int activation) noexcept nogil:
    """Whether float32 `activation` has the intrinsics apply of _vecact.h."""
    return GNCPU_HAVE_VECTOR_ACT and (activation == ACT_SILU or activation == ACT_GELU_TANH
                                      or activation == ACT_GELU)


cdef inline void vector_act_run(const float* x, float* y, Py_ssize_t n, const float* head,
                                const float* a, const float* b, Py_ssize_t step,
                                int activation, bint stream, Py_ssize_t ahead) noexcept nogil:
    """gn_affine_act_f32 with the kind as a literal in each call: each
    compiles to its own loop, with no test of the kind per vector."""
    if activation == ACT_SILU:
        gn_affine_act_f32(x, y, n, head, a, b, step, GN_VECTOR_SILU, stream, ahead)
    elif activation == ACT_GELU_TANH:
        gn_affine_act_f32(x, y, n, head, a, b, step, GN_VECTOR_GELU_TANH, stream, ahead)
    else:
        gn_affine_act_f32(x, y, n, head, a, b, step, GN_VECTOR_GELU, stream, ahead)


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
    vector store would straddle two cache lines. (The intrinsics loops do not
    peel: compute-bound, a masked head costs more than the split stores save.)"""
    if n < 256:  # short runs: the peeled head would cost more than the split stores
        return 0
    return <Py_ssize_t>(((64 - (<size_t>p) % 64) % 64) // size)


cdef inline void affine_scalar(const real* x, real* y, Py_ssize_t n, real head, real a, real b,
                               int activation, bint stream, Py_ssize_t ahead) noexcept nogil:
    """y = act((x - head) * a + b) for one channel's run (NCHW); stream and
    ahead: see own_loop. The portable loops store aligned to 64 bytes after a
    short head."""
    cdef Py_ssize_t peel
    if own_loop(x, y, n, &head, &a, &b, 0, activation, stream, ahead):
        return
    peel = to_alignment(y, n, sizeof(real))
    affine_scalar_run(x, y, peel, head, a, b, activation)
    affine_scalar_run(x + peel, y + peel, n - peel, head, a, b, activation)


cdef inline void affine_table(const real* x, real* y, Py_ssize_t n, const real* head,
                              const real* a, const real* b, int activation,
                              bint stream) noexcept nogil:
    """y = act((x - head) * a + b) along one row of channels (NHWC), with
    per-channel coefficients; stream: see own_loop. The portable loops store
    aligned to 64 bytes after a short head."""
    cdef Py_ssize_t peel
    if own_loop(x, y, n, head, a, b, 1, activation, stream, 0):
        return
    peel = to_alignment(y, n, sizeof(real))
    affine_table_run(x, y, peel, head, a, b, activation)
    affine_table_run(x + peel, y + peel, n - peel, head + peel, a + peel, b + peel, activation)


cdef inline bint own_loop(const real* x, real* y, Py_ssize_t n, const real* head, const real* a,
                          const real* b, Py_ssize_t step, int activation, bint stream,
                          Py_ssize_t ahead) noexcept nogil:
    """The applies with loops of their own, where this build has them: float32
    with an intrinsics activation (_vecact.h; it streams when `stream`, and
    prefetches `ahead`), or no activation stored past the cache when `stream`
    (_stream.h; the caller fences). step: 0 for one coefficient triple, 1 for
    per-element tables. Returns False, having written nothing, otherwise: the
    caller runs the portable loops (ReLU, float64 activations, the baseline
    build's, and every ordinary store without activation)."""
    if real is float:
        if vector_act(activation):
            vector_act_run(x, y, n, head, a, b, step, activation, stream, ahead)
            return True
    if stream and activation == ACT_NONE and GNCPU_HAVE_STREAM:
        if real is float:
            affine_stream_f32(x, y, n, head, a, b, step)
        else:
            affine_stream_f64(x, y, n, head, a, b, step)
        return True
    return False


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
