/* Branch-free float32 math for the fused activations.
 *
 * glibc's expf/erff are not vectorized by gcc without -ffast-math (which we
 * refuse: it breaks NaN handling), so the apply loop would go scalar. These
 * versions use only arithmetic, comparisons (which become blends) and integer
 * bit moves, so gcc vectorizes the loops that call them.
 *
 * Accuracy (max error against float64 over a 1e-4-step sweep of [-30, 30],
 * and of [-110, 95] for exp; tests/test_epilogues.py checks these bounds):
 *   silu, gelu_tanh: absolute 1.4e-7 * max(1, |y|).
 *   gelu (erf form): absolute 1.4e-7 * max(1, |y|).
 * NaN in gives NaN out; +-Inf behave as the float64 composition does.
 *
 * These are the portable versions, compiled into every variant (the
 * baseline's apply and the scalar fallbacks use them); the AVX2 and AVX-512
 * variants' float32 apply loops use _vecact.h, the same formulas rearranged
 * for fewer instructions, to the same accuracy.
 */
#ifndef GNCPU_VECMATH_H
#define GNCPU_VECMATH_H

#include <stdint.h>
#include <string.h>

/* e^x as 2^t, t = x*log2(e) = k + f, |f| <= 1/2; 2^f by a degree-5
 * polynomial (relative error 2.3e-7, a weighted least-squares fit on
 * Chebyshev nodes); 2^k added to the exponent bits.
 * Not a general expf: rounding t costs a relative error of 9e-8*|x|, and
 * results saturate (+Inf for x > 87.3, 2^-125 for x < -86.6). Every caller
 * below uses e^x where that error is multiplied by a factor that vanishes as
 * |x| grows (1/(1+e^x), erfc's tail), so their errors stay ~1e-7 * |y|. */
static inline float gn_expf(float x) {
    const float round_magic = 12582912.0f;      /* 1.5 * 2^23: adding it rounds to an integer */
    float t = x * 1.44269504088896341f;
    t = t < -125.0f ? -125.0f : t;              /* NaN passes through the clamps */
    float tc = t > 126.0f ? 126.0f : t;
    float shifted = tc + round_magic;           /* k = round(tc) sits in the low mantissa bits */
    float f = tc - (shifted - round_magic);
    float p = 1.3278164e-3f;
    p = p * f + 9.6755559e-3f;
    p = p * f + 5.5507079e-2f;
    p = p * f + 2.4022119e-1f;
    p = p * f + 6.9314694e-1f;
    p = p * f + 1.0000001f;
    uint32_t pbits, kbits;
    memcpy(&pbits, &p, sizeof p);
    memcpy(&kbits, &shifted, sizeof shifted);
    pbits += kbits << 23;                       /* the magic's own bits shift out */
    memcpy(&p, &pbits, sizeof p);
    return t > 126.0f ? __builtin_inff() : p;
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

#endif
