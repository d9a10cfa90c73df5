/* The float32 fused apply with SiLU, GELU-tanh or GELU, in explicit AVX2 / AVX-512
 * intrinsics: y = act((x - head) * a + b), with one (head, a, b) for the run
 * (NCHW) or one per element (NHWC's per-channel table).
 *
 * Why not the portable gn_silu_f32 of _vecmath.h (which gcc vectorizes, and
 * which the baseline variant keeps): that loop is bound by its instruction
 * count, not by the division, and two rewrites cut it:
 *   - e = exp(-|s|) instead of exp(-s): e is in [0, 1], so exp never
 *     overflows and needs neither an upper clamp nor the +Inf blend, and
 *     1 + e is in [1, 2]. y / (1 + e^-s) is then y / (1 + e) for s >= 0 and
 *     y e / (1 + e) for s < 0 (a multiply under a mask on AVX-512, a multiply and a blend on AVX2).
 *   - AVX-512 rounds with vrndscaleps and scales by 2^k with vscalefps,
 *     one instruction each, where the portable code needs the magic-number
 *     add/subtract and the integer exponent add.
 * The polynomials are _vecmath.h's; measured accuracy is unchanged (max
 * error over a 1e-4 sweep of [-30, 30], times max(1, |y|): SiLU 1.30e-7,
 * GELU-tanh 1.23e-7, GELU 1.36e-7, each the same as the portable code's). A reciprocal
 * approximation plus a Newton step was tried in place of the division: it
 * was slower on Zen 4 (more instructions) and less accurate (1.6e-7).
 * Special values: NaN -> NaN; silu(+Inf) = +Inf; silu(-Inf) = -Inf * 0 = NaN,
 * as the float64 composition gives.
 *
 * Every element, tails included, goes through the same vector code (a tail
 * with masked loads and stores), so an element's bits never depend on where
 * a run starts or how the work is split between threads.
 */
#ifndef GNCPU_VECACT_H
#define GNCPU_VECACT_H

#include <stddef.h>
#include <stdint.h>

/* gn_affine_act_f32's `kind` */
enum { GN_VECTOR_SILU, GN_VECTOR_GELU_TANH, GN_VECTOR_GELU };

#if defined(__AVX512F__) || defined(__AVX2__)
#define GNCPU_HAVE_VECTOR_ACT 1
#include <immintrin.h>

#if defined(__AVX512F__)
typedef __m512 gn_vf;
enum { GN_VW = 16 };
static inline gn_vf gn_v_set(float v) { return _mm512_set1_ps(v); }
static inline gn_vf gn_v_load(const float* p) { return _mm512_loadu_ps(p); }
static inline void gn_v_store(float* p, gn_vf v) { _mm512_storeu_ps(p, v); }
static inline void gn_v_stream(float* p, gn_vf v) { _mm512_stream_ps(p, v); }  /* p 64-byte aligned */
/* the first `count` (< 16) lanes; the others load as 0 and are not stored */
static inline gn_vf gn_v_load_first(const float* p, ptrdiff_t count) {
    return _mm512_maskz_loadu_ps((__mmask16)((1u << count) - 1), p);
}
static inline void gn_v_store_first(float* p, gn_vf v, ptrdiff_t count) {
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << count) - 1), v);
}
static inline gn_vf gn_v_add(gn_vf a, gn_vf b) { return _mm512_add_ps(a, b); }
static inline gn_vf gn_v_sub(gn_vf a, gn_vf b) { return _mm512_sub_ps(a, b); }
static inline gn_vf gn_v_mul(gn_vf a, gn_vf b) { return _mm512_mul_ps(a, b); }
static inline gn_vf gn_v_div(gn_vf a, gn_vf b) { return _mm512_div_ps(a, b); }
static inline gn_vf gn_v_fma(gn_vf a, gn_vf b, gn_vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline gn_vf gn_v_minus_abs(gn_vf a) { return _mm512_or_ps(gn_v_set(-0.0f), a); }
/* where s < 0: y * e, else y */
static inline gn_vf gn_v_mul_where_negative(gn_vf s, gn_vf y, gn_vf e) {
    return _mm512_mask_mul_ps(y, _mm512_cmp_ps_mask(s, _mm512_setzero_ps(), _CMP_LT_OQ), y, e);
}
/* where s < 0: if_negative, else otherwise */
static inline gn_vf gn_v_where_negative(gn_vf s, gn_vf if_negative, gn_vf otherwise) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(s, _mm512_setzero_ps(), _CMP_LT_OQ),
                                otherwise, if_negative);
}
/* t = k + f, k = round(t): 2^t = p(f) * 2^k. Below -160 the product rounds
 * to 0; the clamp keeps f finite for t = -Inf (max returns t if t is NaN). */
static inline gn_vf gn_v_exp2_split(gn_vf t, gn_vf* f) {
    t = _mm512_max_ps(gn_v_set(-160.0f), t);
    gn_vf k = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    *f = gn_v_sub(t, k);
    return k;
}
static inline gn_vf gn_v_scale2(gn_vf p, gn_vf k, gn_vf t) {
    (void)t;
    return _mm512_scalef_ps(p, k);
}
#else /* AVX2 */
typedef __m256 gn_vf;
enum { GN_VW = 8 };
static inline gn_vf gn_v_set(float v) { return _mm256_set1_ps(v); }
static inline gn_vf gn_v_load(const float* p) { return _mm256_loadu_ps(p); }
static inline void gn_v_store(float* p, gn_vf v) { _mm256_storeu_ps(p, v); }
static inline void gn_v_stream(float* p, gn_vf v) { _mm256_stream_ps(p, v); }  /* p 32-byte aligned */
static inline __m256i gn_v_first_lanes(ptrdiff_t count) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline gn_vf gn_v_load_first(const float* p, ptrdiff_t count) {
    return _mm256_maskload_ps(p, gn_v_first_lanes(count));
}
static inline void gn_v_store_first(float* p, gn_vf v, ptrdiff_t count) {
    _mm256_maskstore_ps(p, gn_v_first_lanes(count), v);
}
static inline gn_vf gn_v_add(gn_vf a, gn_vf b) { return _mm256_add_ps(a, b); }
static inline gn_vf gn_v_sub(gn_vf a, gn_vf b) { return _mm256_sub_ps(a, b); }
static inline gn_vf gn_v_mul(gn_vf a, gn_vf b) { return _mm256_mul_ps(a, b); }
static inline gn_vf gn_v_div(gn_vf a, gn_vf b) { return _mm256_div_ps(a, b); }
static inline gn_vf gn_v_fma(gn_vf a, gn_vf b, gn_vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline gn_vf gn_v_minus_abs(gn_vf a) { return _mm256_or_ps(gn_v_set(-0.0f), a); }
static inline gn_vf gn_v_where_negative(gn_vf s, gn_vf if_negative, gn_vf otherwise) {
    return _mm256_blendv_ps(otherwise, if_negative, _mm256_cmp_ps(s, _mm256_setzero_ps(), _CMP_LT_OQ));
}
static inline gn_vf gn_v_mul_where_negative(gn_vf s, gn_vf y, gn_vf e) {
    return gn_v_where_negative(s, gn_v_mul(y, e), y);
}
/* k = round(t) by the 1.5 * 2^23 magic (k lands in the low mantissa bits of
 * the returned sum); t is clamped at -125 so 2^k stays a normal number. */
static inline gn_vf gn_v_exp2_split(gn_vf t, gn_vf* f) {
    const gn_vf magic = gn_v_set(12582912.0f);
    t = _mm256_max_ps(gn_v_set(-125.0f), t);
    gn_vf shifted = gn_v_add(t, magic);
    *f = gn_v_sub(t, gn_v_sub(shifted, magic));
    return shifted;
}
/* p * 2^k by adding k to the exponent bits; 0 where t was below -125 (and
 * for NaN t, whose result the caller's NaN numerator decides anyway). */
static inline gn_vf gn_v_scale2(gn_vf p, gn_vf shifted, gn_vf t) {
    __m256i bits = _mm256_add_epi32(_mm256_castps_si256(p),
                                    _mm256_slli_epi32(_mm256_castps_si256(shifted), 23));
    return _mm256_and_ps(_mm256_castsi256_ps(bits), _mm256_cmp_ps(t, gn_v_set(-125.0f), _CMP_GT_OQ));
}
#endif

/* e^s for s <= ~0 (0 below about -87): _vecmath.h's gn_expf polynomial
 * for 2^f, |f| <= 1/2. */
static inline gn_vf gn_v_exp_nonpositive(gn_vf s) {
    gn_vf t = gn_v_mul(s, gn_v_set(1.44269504088896341f));
    gn_vf f;
    gn_vf k = gn_v_exp2_split(t, &f);
    gn_vf p = gn_v_set(1.3278164e-3f);
    p = gn_v_fma(p, f, gn_v_set(9.6755559e-3f));
    p = gn_v_fma(p, f, gn_v_set(5.5507079e-2f));
    p = gn_v_fma(p, f, gn_v_set(2.4022119e-1f));
    p = gn_v_fma(p, f, gn_v_set(6.9314694e-1f));
    p = gn_v_fma(p, f, gn_v_set(1.0000001f));
    return gn_v_scale2(p, k, t);
}

/* e^-|s|, in [0, 1]. */
static inline gn_vf gn_v_exp_minus_abs(gn_vf s) {
    return gn_v_exp_nonpositive(gn_v_minus_abs(s));
}

/* y / (1 + e^-s) = y sigmoid(s), written as y / (1 + e) or y e / (1 + e). */
static inline gn_vf gn_v_times_sigmoid(gn_vf y, gn_vf s) {
    gn_vf e = gn_v_exp_minus_abs(s);
    return gn_v_div(gn_v_mul_where_negative(s, y, e), gn_v_add(gn_v_set(1.0f), e));
}

static inline gn_vf gn_v_silu(gn_vf y) { return gn_v_times_sigmoid(y, y); }

/* _vecmath.h's gn_gelu_tanh_f32: y sigmoid(2u), u = sqrt(2/pi) (y + 0.044715 y^3). */
static inline gn_vf gn_v_gelu_tanh(gn_vf y) {
    gn_vf y3 = gn_v_mul(gn_v_mul(y, y), gn_v_mul(y, gn_v_set(0.044715f)));
    return gn_v_times_sigmoid(y, gn_v_mul(gn_v_set(1.59576912160573071f), gn_v_add(y, y3)));
}

/* _vecmath.h's gn_gelu_f32 (erf form, the same Numerical Recipes erfc fit):
 * y (1 - h) for y >= 0 and y h for y < 0, h = erfc(|y| / sqrt2) / 2. */
static inline gn_vf gn_v_gelu(gn_vf y) {
    gn_vf z = gn_v_mul(gn_v_minus_abs(y), gn_v_set(-0.70710678118654752f));
    gn_vf t = gn_v_div(gn_v_set(1.0f), gn_v_fma(gn_v_set(0.5f), z, gn_v_set(1.0f)));
    gn_vf p = gn_v_set(0.17087277f), h;
    p = gn_v_fma(p, t, gn_v_set(-0.82215223f));
    p = gn_v_fma(p, t, gn_v_set(1.48851587f));
    p = gn_v_fma(p, t, gn_v_set(-1.13520398f));
    p = gn_v_fma(p, t, gn_v_set(0.27886807f));
    p = gn_v_fma(p, t, gn_v_set(-0.18628806f));
    p = gn_v_fma(p, t, gn_v_set(0.09678418f));
    p = gn_v_fma(p, t, gn_v_set(0.37409196f));
    p = gn_v_fma(p, t, gn_v_set(1.00002368f));
    p = gn_v_fma(p, t, gn_v_set(-1.26551223f));
    h = gn_v_mul(gn_v_mul(gn_v_set(0.5f), t), gn_v_exp_nonpositive(gn_v_sub(p, gn_v_mul(z, z))));
    return gn_v_mul(y, gn_v_where_negative(y, h, gn_v_sub(gn_v_set(1.0f), h)));
}

/* The loops. `step` is 0 for one coefficient triple (NCHW run) and 1 for a
 * per-element table (NHWC row); `kind` selects the activation. The last
 * n % GN_VW elements use masked loads and stores (the masked-off lanes
 * compute on zeros and are dropped). */
static inline gn_vf gn_v_activate(gn_vf v, int kind) {
    if (kind == GN_VECTOR_GELU) return gn_v_gelu(v);
    return kind == GN_VECTOR_GELU_TANH ? gn_v_gelu_tanh(v) : gn_v_silu(v);
}

/* y[i:i+count] for count < GN_VW, through masked loads and stores (the
 * masked-off lanes compute on zeros and are dropped). */
static inline void gn_act_part(const float* x, float* y, ptrdiff_t i, ptrdiff_t count,
                               const float* head, const float* a, const float* b,
                               ptrdiff_t step, int kind) {
    gn_vf hv = gn_v_set(*head), av = gn_v_set(*a), bv = gn_v_set(*b);
    if (step) {
        hv = gn_v_load_first(head + i, count);
        av = gn_v_load_first(a + i, count);
        bv = gn_v_load_first(b + i, count);
    }
    gn_v_store_first(y + i, gn_v_activate(gn_v_fma(gn_v_sub(gn_v_load_first(x + i, count), hv),
                                                   av, bv), kind), count);
}

/* The whole vectors from i on, stored by STORE(address, vector). */
#define GN_ACT_VECTORS(STORE)                                                                 \
    for (; i + GN_VW <= n; i += GN_VW) {                                                      \
        if (step) {                                                                           \
            hv = gn_v_load(head + i);                                                         \
            av = gn_v_load(a + i);                                                            \
            bv = gn_v_load(b + i);                                                            \
        }                                                                                     \
        if (ahead) __builtin_prefetch(x + i + ahead, 0, 2);                                  \
        STORE(y + i, gn_v_activate(gn_v_fma(gn_v_sub(gn_v_load(x + i), hv), av, bv), kind)); \
    }

/* stream: non-temporal stores (see _stream.h), after a masked head up to
 * the vectors' alignment; the caller fences. Same bits either way.
 * ahead (elements; 0: none): prefetch x[i + ahead] into L2 while computing
 * x[i], the next group's data during this group's compute-bound apply, so
 * the next group's memory-bound statistics find it there. */
static inline void gn_affine_act_f32(const float* x, float* y, ptrdiff_t n,
                                     const float* head, const float* a, const float* b,
                                     ptrdiff_t step, int kind, int stream, ptrdiff_t ahead) {
    ptrdiff_t i = 0;
    gn_vf hv = gn_v_set(*head), av = gn_v_set(*a), bv = gn_v_set(*b);
    if (n <= 0) return;
    if (stream && (uintptr_t)y % sizeof(float) == 0) {
        i = (ptrdiff_t)(((uintptr_t)0 - (uintptr_t)y) % sizeof(gn_vf) / sizeof(float));
        if (i > n) i = n;
        if (i) gn_act_part(x, y, 0, i, head, a, b, step, kind);
        GN_ACT_VECTORS(gn_v_stream)
    } else {
        GN_ACT_VECTORS(gn_v_store)
    }
    if (i < n) gn_act_part(x, y, i, n - i, head, a, b, step, kind);
}

#else /* baseline: the caller keeps its portable loops */
#define GNCPU_HAVE_VECTOR_ACT 0
static inline void gn_affine_act_f32(const float* x, float* y, ptrdiff_t n,
                                     const float* head, const float* a, const float* b,
                                     ptrdiff_t step, int kind, int stream, ptrdiff_t ahead) {}
#endif

#endif
