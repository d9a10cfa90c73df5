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


def unary(const onnx_real[::1] x, onnx_real[::1] y, int code, int threads):
    """y = f(x) elementwise, f named by `code` (UNARY_CODES); y may be x."""
    cdef Py_ssize_t n = x.shape[0], blocks = (n + UNARY_BLOCK - 1) // UNARY_BLOCK, k, start
    if y.shape[0] != n or code < UNARY_SIGMOID or code > UNARY_GELU_TANH:
        raise ValueError(f"unary: sizes {n} and {y.shape[0]}, code {code}")
    if n == 0:
        return
    with nogil:
        for k in prange(blocks, num_threads=max(1, min(threads, blocks)), schedule="static"):
            start = k * UNARY_BLOCK
            if onnx_real is float:
                unary_block_f32(&x[start], &y[start], min(<Py_ssize_t>UNARY_BLOCK, n - start), code)
            else:
                unary_block_f64(&x[start], &y[start], min(<Py_ssize_t>UNARY_BLOCK, n - start), code)


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


def softmax(const onnx_real[:, :, ::1] x, onnx_real[:, :, ::1] y, int threads):
    """Softmax over axis 1 of x viewed as (outer, n, inner)."""
    cdef Py_ssize_t outer = x.shape[0], n = x.shape[1], inner = x.shape[2], rows = outer * inner, r, o, i
    if y.shape[0] != outer or y.shape[1] != n or y.shape[2] != inner:
        raise ValueError("softmax: x and y shapes differ")
    if n == 0 or rows == 0:
        return
    with nogil:
        for r in prange(rows, num_threads=max(1, min(threads, rows)), schedule="static"):
            o = r // inner
            i = r - o * inner
            softmax_row(&x[o, 0, i], &y[o, 0, i], n, inner)


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


def layer_norm(const onnx_real[:, ::1] x, const onnx_real[::1] scale, bias, onnx_real[:, ::1] y,
               double[::1] mean, double[::1] rstd, double eps, int threads):
    """Each row of x (rows, n) normalized: y = (x - mean) * rstd * scale + bias
    (bias None or like scale, both of length n); mean and rstd (rows,) out."""
    cdef Py_ssize_t rows = x.shape[0], n = x.shape[1], r
    cdef const onnx_real[::1] bias_view
    cdef const onnx_real* bias_ptr = NULL
    if scale.shape[0] != n or y.shape[0] != rows or y.shape[1] != n or mean.shape[0] != rows \
            or rstd.shape[0] != rows:
        raise ValueError("layer_norm: shapes disagree")
    if bias is not None:
        bias_view = bias
        if bias_view.shape[0] != n:
            raise ValueError("layer_norm: bias length differs from the row length")
        bias_ptr = &bias_view[0]
    if rows == 0 or n == 0:
        return
    with nogil:
        for r in prange(rows, num_threads=max(1, min(threads, rows)), schedule="static"):
            layer_norm_row(&x[r, 0], &y[r, 0], &scale[0], bias_ptr, n, eps, &mean[r], &rstd[r])


def im2col_2d(const onnx_real[:, :, ::1] x, onnx_real[:, ::1] cols, int kh, int kw, int sh, int sw,
              int dh, int dw, int ph, int pw, Py_ssize_t ow):
    """Column matrix of a 2-D convolution of x (C, H, W): row (c, ky, kx),
    column (oy, ox) holds x[c, oy*sh - ph + ky*dh, ox*sw - pw + kx*dw], zero
    outside x (ph, pw: the leading pads). cols is (C*kh*kw, OH*ow)."""
    cdef Py_ssize_t c_count = x.shape[0], h = x.shape[1], w = x.shape[2]
    cdef Py_ssize_t positions = cols.shape[1], rows = cols.shape[0]
    cdef Py_ssize_t oh, c, ky, kx, oy, ox, iy, ix0, lo, hi, row
    cdef onnx_real* out
    if kh <= 0 or kw <= 0 or sh <= 0 or sw <= 0 or dh <= 0 or dw <= 0 or rows != c_count * kh * kw:
        raise ValueError("im2col_2d: bad geometry")
    oh = positions // ow if ow > 0 else 0
    if ow <= 0 or oh * ow != positions:
        raise ValueError("im2col_2d: cols does not match the output size")
    with nogil:
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
                        out = &cols[row, oy * ow]
                        iy = oy * sh - ph + ky * dh
                        if iy < 0 or iy >= h:
                            memset(out, 0, ow * sizeof(onnx_real))
                            continue
                        if lo > 0:
                            memset(out, 0, lo * sizeof(onnx_real))
                        if sw == 1:
                            memcpy(out + lo, &x[c, iy, ix0 + lo], (hi - lo) * sizeof(onnx_real))
                        else:
                            for ox in range(lo, hi):
                                out[ox] = x[c, iy, ix0 + ox * sw]
                        if hi < ow:
                            memset(out + hi, 0, (ow - hi) * sizeof(onnx_real))
