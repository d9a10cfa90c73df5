/* Branch-free float32 math for the fused activations.
 *
 * glibc's expf/erff are not vectorized by gcc without -ffast-math (which we
 * refuse: it breaks NaN handling), so the apply loop would go scalar. These
 * versions use only arithmetic, comparisons (which become blends) and integer
 * bit moves, so gcc vectorizes the loops that call them.
 *
 * Accuracy (max error against float64 over a 1e-4-step sweep of [-30, 30],
 * and of [-110, 95] for exp; tests/test_epilogues.py checks these bounds):
 *   gn_expf:  relative 1.0e-7 where the result is a normal float;
 *             overflows to +Inf and underflows gradually like expf.
 *   silu, gelu_tanh: absolute 1.2e-7 * max(1, |y|).
 *   gelu (erf form): absolute 1.2e-7 * max(1, |y|).
 * NaN in gives NaN out; +-Inf behave as the float64 composition does.
 */
#ifndef GNCPU_VECMATH_H
#define GNCPU_VECMATH_H

#include <stdint.h>
#include <string.h>

static inline float gn_bits_to_float(int32_t bits) {
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* exp(x): x = k*ln2 + r, |r| <= ln2/2; e^r by its degree-7 Taylor polynomial
 * (truncation error r^8/8! < 5e-9). 2^k is applied as two factors 2^(k>>1)
 * and 2^(k - (k>>1)), each a normal float for every k in [-150, 129], so
 * overflow to +Inf and gradual underflow come out of the multiplications. */
static inline float gn_expf(float x) {
    const float log2e = 1.44269504088896341f;
    const float ln2_hi = 0.693359375f;          /* ln2 split so k*ln2_hi is exact */
    const float ln2_lo = -2.12194440e-4f;
    const float round_magic = 12582912.0f;      /* 1.5 * 2^23: adding it rounds to an integer */
    float xc = x < -104.0f ? -104.0f : (x > 89.0f ? 89.0f : x);  /* NaN passes through */
    float k = (xc * log2e + round_magic) - round_magic;
    float r = (xc - k * ln2_hi) - k * ln2_lo;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t ki = (int32_t)k;
    int32_t k1 = ki >> 1;
    return p * gn_bits_to_float((k1 + 127) << 23) * gn_bits_to_float((ki - k1 + 127) << 23);
}

/* y * sigmoid(y) = y / (1 + e^-y): -Inf gives -Inf/Inf = NaN, as y*sigmoid(y) does. */
static inline float gn_silu_f32(float y) {
    return y / (1.0f + gn_expf(-y));
}

/* 0.5 y (1 + tanh(u)) == y / (1 + e^(-2u)), u = sqrt(2/pi) (y + 0.044715 y^3). */
static inline float gn_gelu_tanh_f32(float y) {
    const float two_sqrt_2_over_pi = 1.59576912160573071f;
    float u2 = two_sqrt_2_over_pi * (y + 0.044715f * y * y * y);
    return y / (1.0f + gn_expf(-u2));
}

/* 0.5 y (1 + erf(y / sqrt2)), through h = erfc(|y|/sqrt2) / 2:
 * gelu = y (1 - h) for y >= 0 and y h for y < 0, which keeps relative accuracy
 * in the negative tail. erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z/2): the
 * Chebyshev fit of Press et al., Numerical Recipes sec. 6.2 (relative error
 * < 1.2e-7 for all z >= 0). */
static inline float gn_gelu_f32(float y) {
    const float inv_sqrt2 = 0.70710678118654752f;
    float z = (y < 0.0f ? -y : y) * inv_sqrt2;
    float t = 1.0f / (1.0f + 0.5f * z);
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    float h = 0.5f * t * gn_expf(p - z * z);
    return y * (y < 0.0f ? h : 1.0f - h);
}

/* max(y, 0) with NaN kept (NaN < 0 is false). */
static inline float gn_relu_f32(float y) {
    return y < 0.0f ? 0.0f : y;
}

#endif
