/* float16 <-> float32 conversion loops, for the float16 entry points (the
 * kernels compute float16 inputs in float32).
 *
 * With F16C (in the avx2 and avx512 variants' -march) they convert 8 or 16
 * values per instruction (vcvtph2ps / vcvtps2ph, round to nearest even as IEEE
 * and NumPy do): ~20x faster than NumPy's casts, which take 2-4 ns per element
 * on this project's CPUs. GCC does not vectorize _Float16 conversions itself,
 * hence the intrinsics. Without F16C (the baseline variant) software
 * conversion is slower than NumPy's: GNCPU_HAVE_FLOAT16 is 0 there and the
 * Python side keeps NumPy's casts. The buffers are passed as void*. */
#ifndef GNCPU_HALF_H
#define GNCPU_HALF_H

#include <stddef.h>
#include <stdint.h>

#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#define GNCPU_HAVE_FLOAT16 1

static inline void gn_half_to_float(const void* src, float* dst, ptrdiff_t n) {
    const uint16_t* half = (const uint16_t*)src;
    ptrdiff_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(half + i))));
#endif
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(half + i))));
    for (; i < n; i++)
        dst[i] = _cvtsh_ss(half[i]);
}

static inline void gn_float_to_half(const float* src, void* dst, ptrdiff_t n) {
    uint16_t* half = (uint16_t*)dst;
    ptrdiff_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i*)(half + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i*)(half + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++)
        half[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

#else
#define GNCPU_HAVE_FLOAT16 0

static inline void gn_half_to_float(const void* src, float* dst, ptrdiff_t n) {
    (void)src; (void)dst; (void)n;
}

static inline void gn_float_to_half(const float* src, void* dst, ptrdiff_t n) {
    (void)src; (void)dst; (void)n;
}
#endif

#endif
