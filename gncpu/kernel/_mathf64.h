/* Branch-free double-precision exp and erf for the float32 ONNX ops
 * (Sigmoid, Erf, Gelu, Softmax; gncpu/kernel/_onnx_ops.pxi).
 *
 * Each float32 result is computed in double and rounded once, so its error is
 * the final rounding (0.5 ulp) plus the double approximation's error scaled
 * to float32 ulps. Like _vecmath.h these use only arithmetic, comparisons and
 * integer bit moves, so gcc vectorizes the loops that call them (libm's exp
 * and erf are scalar calls); they need no -ffast-math.
 *
 * Error of the double approximations (before the float32 rounding):
 *   gn_exp_f64:  relative 1e-13 for |x| < 700 (degree-11 Taylor series of
 *                e^g, |g| <= ln2/2; the rest is the argument t = x log2(e) rounded).
 *   gn_erfc_f64: relative 1.2e-7 for z >= 0.75 (Numerical Recipes' Chebyshev
 *                fit, sec. 6.2), 1e-12 below (Taylor series of erf).
 * so in float32 ulps: Sigmoid, Softmax's exponentials and gelu_tanh <= 0.5
 * ulp + 1e-6; Erf <= 1.5 ulp; Gelu (erf form) <= 2.5 ulp.
 * tests/test_onnx_native_ops.py checks these bounds against float64 libm.
 * NaN in gives NaN out; +-Inf give the limits of the functions.
 */
#ifndef GNCPU_MATHF64_H
#define GNCPU_MATHF64_H

#include <stdint.h>
#include <string.h>

/* e^x. x = (k + f) ln2, k an integer, |f| <= 1/2; e^(f ln2) by its Taylor
 * series; 2^k added to the exponent bits. Saturates: 2^-1020 below x = -707
 * (zero once rounded to float32), +Inf above x = 707. */
static inline double gn_exp_f64(double x) {
    const double round_magic = 6755399441055744.0;   /* 1.5 * 2^52: adding it rounds to an integer */
    double t = x * 1.4426950408889634;
    t = t < -1020.0 ? -1020.0 : t;                    /* NaN passes through the clamps */
    double tc = t > 1020.0 ? 1020.0 : t;
    double shifted = tc + round_magic;
    double k = shifted - round_magic;
    /* g = (t - k) ln2: t's rounding costs a relative 1.1e-16 |t| < 1e-13 in the
     * result, far below float32's ulp; a clamped t gives a small g too. */
    double g = (tc - k) * 0.6931471805599453;
    double p = 2.505210838544172e-08;                 /* 1/11! */
    p = p * g + 2.755731922398589e-07;
    p = p * g + 2.7557319223985893e-06;
    p = p * g + 2.48015873015873e-05;
    p = p * g + 1.984126984126984e-04;
    p = p * g + 1.388888888888889e-03;
    p = p * g + 8.333333333333333e-03;
    p = p * g + 4.1666666666666664e-02;
    p = p * g + 1.6666666666666666e-01;
    p = p * g + 0.5;
    p = p * g + 1.0;
    p = p * g + 1.0;
    uint64_t pbits, kbits;
    memcpy(&pbits, &p, sizeof p);
    memcpy(&kbits, &shifted, sizeof shifted);
    pbits += kbits << 52;                             /* the magic's own bits shift out */
    memcpy(&p, &pbits, sizeof p);
    p = t > 1020.0 ? __builtin_inf() : p;
    return x != x ? x : p;                            /* a NaN's payload bits must not reach the exponent */
}

/* erf(z) by its Taylor series, for |z| < 0.75:
 * 2/sqrt(pi) z sum_n c_n z^(2n), c_n = (-1)^n / (n! (2n + 1)); 13 terms leave
 * a relative error below 1e-12 there. */
static inline double gn_erf_series_f64(double z) {
    double z2 = z * z;
    double p = 1.0 / (479001600.0 * 25.0);            /* c_12 */
    p = p * z2 - 1.0 / (39916800.0 * 23.0);
    p = p * z2 + 1.0 / (3628800.0 * 21.0);
    p = p * z2 - 1.0 / (362880.0 * 19.0);
    p = p * z2 + 1.0 / (40320.0 * 17.0);
    p = p * z2 - 1.0 / (5040.0 * 15.0);
    p = p * z2 + 1.0 / (720.0 * 13.0);
    p = p * z2 - 1.0 / (120.0 * 11.0);
    p = p * z2 + 1.0 / (24.0 * 9.0);
    p = p * z2 - 1.0 / (6.0 * 7.0);
    p = p * z2 + 1.0 / (2.0 * 5.0);
    p = p * z2 - 1.0 / 3.0;
    p = p * z2 + 1.0;                                 /* c_0 */
    return 1.1283791670955126 * z * p;
}

/* erfc(z) for z >= 0 (NaN for NaN, 0 for +Inf). */
static inline double gn_erfc_nonneg_f64(double z) {
    double t = 1.0 / (1.0 + 0.5 * z);
    double p = 0.17087277;
    p = p * t - 0.82215223;
    p = p * t + 1.48851587;
    p = p * t - 1.13520398;
    p = p * t + 0.27886807;
    p = p * t - 0.18628806;
    p = p * t + 0.09678418;
    p = p * t + 0.37409196;
    p = p * t + 1.00002368;
    p = p * t - 1.26551223;
    double tail = t * gn_exp_f64(p - z * z);
    return z < 0.75 ? 1.0 - gn_erf_series_f64(z) : tail;
}

/* erf(x), any sign: odd. */
static inline double gn_erf_f64(double x) {
    double z = x < 0.0 ? -x : x;
    double e = z < 0.75 ? gn_erf_series_f64(z) : 1.0 - gn_erfc_nonneg_f64(z);
    e = x != x ? x : e;
    return x < 0.0 ? -e : e;
}

/* 0.5 x (1 + erf(x / sqrt2)) = x (1 - h) for x >= 0 and x h for x < 0,
 * h = erfc(|x|/sqrt2) / 2: relative accuracy holds in the negative tail. */
static inline double gn_gelu_f64(double x) {
    double z = (x < 0.0 ? -x : x) * 0.7071067811865476;
    double h = 0.5 * gn_erfc_nonneg_f64(z);
    return x * (x < 0.0 ? h : 1.0 - h);
}

/* 0.5 x (1 + tanh(u)) = x / (1 + e^(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3). */
static inline double gn_gelu_tanh_f64(double x) {
    double u2 = 1.5957691216057308 * (x + 0.044715 * x * x * x);
    return x / (1.0 + gn_exp_f64(-u2));
}

static inline double gn_sigmoid_f64(double x) {
    return 1.0 / (1.0 + gn_exp_f64(-x));
}

#endif
