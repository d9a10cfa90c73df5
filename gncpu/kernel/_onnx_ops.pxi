# Native kernels for the ONNX ops around GroupNorm: Sigmoid, Erf, Gelu
# (elementwise), Softmax and LayerNormalization (per row), and the im2col of
# small convolutions. Included by each _<level>.pyx, so every instruction-set
# level has them.
#
# Callers (gncpu/onnx/ops/) have validated shapes and made arrays C-contiguous
# of the kernel's dtype. float32 math runs in double and rounds once
# (_mathf64.h states the error bounds); float64 calls libm.
#
# Thread count never changes a result: elementwise ops have no reductions,
# and each row of Softmax or LayerNormalization is reduced by one thread in a
# fixed order, so `threads` only decides who computes which rows.

cimport numpy as cnp
from cython.parallel cimport prange
from libc.math cimport erf as libm_erf, erfc as libm_erfc, exp as libm_exp, sqrt as libm_sqrt
from libc.string cimport memcpy, memset

cdef extern from "_mathf64.h":
    double gn_exp_f64(double) noexcept nogil
    double gn_erf_f64(double) noexcept nogil
    double gn_gelu_f64(double) noexcept nogil
    double gn_gelu_tanh_f64(double) noexcept nogil
    double gn_sigmoid_f64(double) noexcept nogil

ctypedef fused onnx_real:
    float
    double

cdef enum:
    UNARY_SIGMOID = 0
    UNARY_ERF = 1
    UNARY_GELU = 2
    UNARY_GELU_TANH = 3
    # Elements per parallel task of an elementwise op: 64 KiB of float32.
    UNARY_BLOCK = 16384
    # Partial sums per row reduction: independent adds pipeline, fixed order.
    ROW_LANES = 8

UNARY_CODES = {"sigmoid": UNARY_SIGMOID, "erf": UNARY_ERF, "gelu": UNARY_GELU, "gelu_tanh": UNARY_GELU_TANH}


cdef inline void unary_block_f32(const float* x, float* y, Py_ssize_t n, int code) noexcept nogil:
    # One loop per function, so each vectorizes on its own.
    cdef Py_ssize_t i
    if code == UNARY_SIGMOID:
        for i in range(n):
            y[i] = <float>gn_sigmoid_f64(x[i])
    elif code == UNARY_ERF:
        for i in range(n):
            y[i] = <float>gn_erf_f64(x[i])
    elif code == UNARY_GELU:
        for i in range(n):
            y[i] = <float>gn_gelu_f64(x[i])
    else:
        for i in range(n):
            y[i] = <float>gn_gelu_tanh_f64(x[i])


cdef inline double gelu_libm(double v) noexcept nogil:
    # erfc keeps relative accuracy in the negative tail, where 1 + erf(v/sqrt2) cancels.
    return 0.5 * v * libm_erfc(-v * 0.7071067811865476)


cdef inline double gelu_tanh_libm(double v) noexcept nogil:
    # 0.5 v (1 + tanh(u)) as v / (1 + e^(-2u)): the sum 1 + tanh(u) cancels for u << 0.
    return v / (1.0 + libm_exp(-1.5957691216057308 * (v + 0.044715 * v * v * v)))


cdef inline void unary_block_f64(const double* x, double* y, Py_ssize_t n, int code) noexcept nogil:
    cdef Py_ssize_t i
    if code == UNARY_SIGMOID:
        for i in range(n):
            y[i] = 1.0 / (1.0 + libm_exp(-x[i]))
    elif code == UNARY_ERF:
        for i in range(n):
            y[i] = libm_erf(x[i])
    elif code == UNARY_GELU:
        for i in range(n):
            y[i] = gelu_libm(x[i])
    else:
        for i in range(n):
            y[i] = gelu_tanh_libm(x[i])


cdef inline void unary_block(const char* x, char* y, Py_ssize_t start, Py_ssize_t n, int code,
                             bint is_double) noexcept nogil:
    cdef Py_ssize_t count = min(<Py_ssize_t>UNARY_BLOCK, n - start)
    if is_double:
        unary_block_f64(<const double*>x + start, <double*>y + start, count, code)
    else:
        unary_block_f32(<const float*>x + start, <float*>y + start, count, code)


cdef int check_float_arrays(str op, tuple arrays) except -1:
    # The Python-facing kernels take plain ndarrays: a typed-memoryview signature
    # over a fused type costs ~2 us of dispatch per call, more than a small op.
    cdef cnp.ndarray a
    cdef int first = cnp.PyArray_TYPE(<cnp.ndarray>arrays[0])
    if first != cnp.NPY_FLOAT32 and first != cnp.NPY_FLOAT64:
        raise TypeError(f"{op}: float32 or float64 arrays expected, got {arrays[0].dtype}")
    for a in arrays:
        if cnp.PyArray_TYPE(a) != first:
            raise TypeError(f"{op}: arrays must share one dtype, got {arrays[0].dtype} and {a.dtype}")
        if not cnp.PyArray_IS_C_CONTIGUOUS(a):
            raise ValueError(f"{op}: arrays must be C-contiguous")
    return 0


def unary(cnp.ndarray x, cnp.ndarray y, int code, int threads):
    """y = f(x) elementwise over C-contiguous arrays of one float dtype and
    size, f named by `code` (UNARY_CODES); y may be x."""
    check_float_arrays("unary", (x, y))
    cdef Py_ssize_t n = cnp.PyArray_SIZE(x), blocks = (n + UNARY_BLOCK - 1) // UNARY_BLOCK, k
    if cnp.PyArray_SIZE(y) != n or code < UNARY_SIGMOID or code > UNARY_GELU_TANH:
        raise ValueError(f"unary: sizes {n} and {cnp.PyArray_SIZE(y)}, code {code}")
    cdef const char* src = <const char*>cnp.PyArray_DATA(x)
    cdef char* dst = <char*>cnp.PyArray_DATA(y)
    cdef bint is_double = cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT64
    if blocks <= 1 or threads <= 1:
        with nogil:
            for k in range(blocks):
                unary_block(src, dst, k * UNARY_BLOCK, n, code, is_double)
        return
    with nogil:
        for k in prange(blocks, num_threads=min(threads, blocks), schedule="static"):
            unary_block(src, dst, k * UNARY_BLOCK, n, code, is_double)


cdef inline void softmax_row(const onnx_real* x, onnx_real* y, Py_ssize_t n, Py_ssize_t stride) noexcept nogil:
    # y_j = e^(x_j - max) / sum; the sum is taken over the exponentials as
    # stored (rounded to y's type), so the outputs are those values scaled once.
    # A NaN anywhere makes the sum, hence the whole row, NaN (as x - max does
    # in NumPy); so does +Inf (Inf - Inf).
    cdef Py_ssize_t j, lane
    cdef double m = x[0], total = 0.0, inv
    cdef double acc[ROW_LANES]
    for j in range(1, n):
        if x[j * stride] > m:
            m = x[j * stride]
    for j in range(n):
        if onnx_real is float:
            y[j * stride] = <float>gn_exp_f64(x[j * stride] - m)
        else:
            y[j * stride] = libm_exp(x[j * stride] - m)
    memset(acc, 0, sizeof(acc))
    for j in range(n // ROW_LANES):
        for lane in range(ROW_LANES):
            acc[lane] += y[(j * ROW_LANES + lane) * stride]
    for j in range(n - n % ROW_LANES, n):
        acc[0] += y[j * stride]
    for lane in range(ROW_LANES):
        total += acc[lane]
    inv = 1.0 / total
    for j in range(n):
        y[j * stride] = <onnx_real>(y[j * stride] * inv)


cdef void softmax_rows(const onnx_real* x, onnx_real* y, Py_ssize_t outer, Py_ssize_t n, Py_ssize_t inner,
                       int threads) noexcept nogil:
    cdef Py_ssize_t rows = outer * inner, r, o, i
    for r in prange(rows, num_threads=max(1, min(threads, rows)), schedule="static"):
        o = r // inner
        i = r - o * inner
        softmax_row(x + o * n * inner + i, y + o * n * inner + i, n, inner)


def softmax(cnp.ndarray x, cnp.ndarray y, int threads):
    """Softmax over axis 1 of x (outer, n, inner) into y of the same shape."""
    check_float_arrays("softmax", (x, y))
    if x.ndim != 3 or y.ndim != 3 or any(x.shape[d] != y.shape[d] for d in range(3)):
        raise ValueError("softmax: x and y must be 3-D arrays of one shape")
    cdef Py_ssize_t outer = x.shape[0], n = x.shape[1], inner = x.shape[2]
    cdef bint is_double = cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT64
    cdef void* src = cnp.PyArray_DATA(x)
    cdef void* dst = cnp.PyArray_DATA(y)
    if n == 0 or outer * inner == 0:
        return
    with nogil:
        if is_double:
            softmax_rows(<const double*>src, <double*>dst, outer, n, inner, threads)
        else:
            softmax_rows(<const float*>src, <float*>dst, outer, n, inner, threads)


cdef inline void layer_norm_row(const onnx_real* x, onnx_real* y, const onnx_real* scale, const onnx_real* bias,
                                Py_ssize_t n, double eps, double* mean_out, double* rstd_out) noexcept nogil:
    # Two passes in double: the mean, then the centred sum of squares (never
    # E[x^2] - E[x]^2, which cancels at large offsets); y from (x - mean) in double.
    cdef Py_ssize_t j, lane, body = n - n % ROW_LANES
    cdef double acc[ROW_LANES]
    cdef double mean = 0.0, m2 = 0.0, rstd, d
    memset(acc, 0, sizeof(acc))
    for j in range(0, body // ROW_LANES):
        for lane in range(ROW_LANES):
            acc[lane] += x[j * ROW_LANES + lane]
    for j in range(body, n):
        acc[0] += x[j]
    for lane in range(ROW_LANES):
        mean += acc[lane]
    mean /= n
    memset(acc, 0, sizeof(acc))
    for j in range(0, body // ROW_LANES):
        for lane in range(ROW_LANES):
            d = x[j * ROW_LANES + lane] - mean
            acc[lane] += d * d
    for j in range(body, n):
        d = x[j] - mean
        acc[0] += d * d
    for lane in range(ROW_LANES):
        m2 += acc[lane]
    rstd = 1.0 / libm_sqrt(m2 / n + eps)
    if bias == NULL:
        for j in range(n):
            y[j] = <onnx_real>((x[j] - mean) * rstd * scale[j])
    else:
        for j in range(n):
            y[j] = <onnx_real>((x[j] - mean) * rstd * scale[j] + bias[j])
    mean_out[0] = mean
    rstd_out[0] = rstd


cdef void layer_norm_rows(const onnx_real* x, const onnx_real* scale, const onnx_real* bias, onnx_real* y,
                          double* mean, double* rstd, Py_ssize_t rows, Py_ssize_t n, double eps,
                          int threads) noexcept nogil:
    cdef Py_ssize_t r
    for r in prange(rows, num_threads=max(1, min(threads, rows)), schedule="static"):
        layer_norm_row(x + r * n, y + r * n, scale, bias, n, eps, mean + r, rstd + r)


def layer_norm(cnp.ndarray x, cnp.ndarray scale, bias, cnp.ndarray y, cnp.ndarray mean, cnp.ndarray rstd,
               double eps, int threads):
    """Each row of x (rows, n) normalized: y = (x - mean) * rstd * scale + bias
    (bias None or like scale, both of length n); mean and rstd (rows,) float64 out."""
    arrays = (x, scale, y) if bias is None else (x, scale, bias, y)
    check_float_arrays("layer_norm", arrays)
    check_float_arrays("layer_norm", (mean, rstd))
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[1] != y.shape[1]:
        raise ValueError("layer_norm: x and y must be 2-D arrays of one shape")
    cdef Py_ssize_t rows = x.shape[0], n = x.shape[1]
    if cnp.PyArray_SIZE(scale) != n or (bias is not None and cnp.PyArray_SIZE(bias) != n):
        raise ValueError(f"layer_norm: scale and bias must hold {n} values")
    if cnp.PyArray_TYPE(mean) != cnp.NPY_FLOAT64 or cnp.PyArray_SIZE(mean) != rows or cnp.PyArray_SIZE(rstd) != rows:
        raise ValueError(f"layer_norm: mean and rstd must be float64 arrays of {rows} values")
    if rows == 0 or n == 0:
        return
    cdef bint is_double = cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT64
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* ps = cnp.PyArray_DATA(scale)
    cdef void* pb = NULL if bias is None else cnp.PyArray_DATA(<cnp.ndarray>bias)
    cdef void* py = cnp.PyArray_DATA(y)
    cdef double* pm = <double*>cnp.PyArray_DATA(mean)
    cdef double* pr = <double*>cnp.PyArray_DATA(rstd)
    with nogil:
        if is_double:
            layer_norm_rows(<const double*>px, <const double*>ps, <const double*>pb, <double*>py, pm, pr,
                            rows, n, eps, threads)
        else:
            layer_norm_rows(<const float*>px, <const float*>ps, <const float*>pb, <float*>py, pm, pr,
                            rows, n, eps, threads)


cdef void im2col_planes(const onnx_real* x, onnx_real* cols, Py_ssize_t c_count, Py_ssize_t h, Py_ssize_t w,
                        Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dw,
                        Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t oh, Py_ssize_t ow) noexcept nogil:
    cdef Py_ssize_t c, ky, kx, oy, ox, iy, ix0, lo, hi, row
    cdef onnx_real* out
    cdef const onnx_real* line
    for c in range(c_count):
        for ky in range(kh):
            for kx in range(kw):
                row = (c * kh + ky) * kw + kx
                # Output columns ox whose input column ix0 + ox*sw lies in [0, w).
                ix0 = kx * dw - pw
                lo = 0 if ix0 >= 0 else (-ix0 + sw - 1) // sw
                hi = 0 if ix0 >= w else (w - 1 - ix0) // sw + 1
                lo = min(lo, ow)
                hi = max(lo, min(hi, ow))
                for oy in range(oh):
                    # Plain loops, not memcpy/memset: rows are short (tens of
                    # elements), where a library call costs more than the copy.
                    out = cols + (row * oh + oy) * ow
                    iy = oy * sh - ph + ky * dh
                    if iy < 0 or iy >= h:
                        for ox in range(ow):
                            out[ox] = 0
                        continue
                    line = x + (c * h + iy) * w + ix0
                    for ox in range(lo):
                        out[ox] = 0
                    if sw == 1:
                        for ox in range(lo, hi):
                            out[ox] = line[ox]
                    else:
                        for ox in range(lo, hi):
                            out[ox] = line[ox * sw]
                    for ox in range(hi, ow):
                        out[ox] = 0


def im2col_2d(cnp.ndarray x, cnp.ndarray cols, int kh, int kw, int sh, int sw, int dh, int dw, int ph, int pw,
              Py_ssize_t oh, Py_ssize_t ow):
    """Column matrix of a 2-D convolution of x (C, H, W): row (c, ky, kx),
    column (oy, ox) holds x[c, oy*sh - ph + ky*dh, ox*sw - pw + kx*dw], zero
    outside x (ph, pw: the leading pads). cols holds C*kh*kw x oh*ow values."""
    check_float_arrays("im2col_2d", (x, cols))
    if x.ndim != 3:
        raise ValueError("im2col_2d: x must be (C, H, W)")
    cdef Py_ssize_t c_count = x.shape[0], h = x.shape[1], w = x.shape[2]
    if kh <= 0 or kw <= 0 or sh <= 0 or sw <= 0 or dh <= 0 or dw <= 0 or oh <= 0 or ow <= 0 \
            or cnp.PyArray_SIZE(cols) != c_count * kh * kw * oh * ow:
        raise ValueError("im2col_2d: bad geometry")
    cdef bint is_double = cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT64
    cdef void* src = cnp.PyArray_DATA(x)
    cdef void* dst = cnp.PyArray_DATA(cols)
    with nogil:
        if is_double:
            im2col_planes(<const double*>src, <double*>dst, c_count, h, w, kh, kw, sh, sw, dh, dw, ph, pw, oh, ow)
        else:
            im2col_planes(<const float*>src, <float*>dst, c_count, h, w, kh, kw, sh, sw, dh, dw, ph, pw, oh, ow)
