/* The affine apply y = (x - head) * a + b with non-temporal ("streaming")
 * stores, for outputs too large to stay in the last-level cache.
 *
 * An ordinary store first reads the line it writes (read-for-ownership):
 * writing y costs a read and a write of it, so a call that streams x in
 * from memory moves three arrays' worth, where a copy (whose large memcpy
 * avoids that read) moves two. Non-temporal stores write whole lines
 * straight to memory. They also evict y from the cache, which the next
 * operation would have read from there: worth it only when y would not have
 * stayed anyway (the caller decides; see stream_threshold in
 * _group_norm.pxi). Measured on Zen 4, 1x128x512x512 float32: 35% faster,
 * and 23% faster counting a copy of y after it.
 *
 * Same arithmetic per element as the ordinary loop (one subtract, then one
 * multiply-add, contracted alike): the same bits. The stores are weakly
 * ordered: every thread that streamed calls gn_store_fence() before its
 * results are read (the end of its part of a parallel region).
 */
#ifndef GNCPU_STREAM_H
#define GNCPU_STREAM_H

#include <stddef.h>
#include <stdint.h>

#if defined(__SSE2__)
#define GNCPU_HAVE_STREAM 1
#include <immintrin.h>

/* STREAM(y, x, h, a, b): y[0:W] = (x[0:W] - h[0:W]) * a[0:W] + b[0:W] with a
 * streaming store, for coefficient vectors loaded or broadcast by LOAD/SET. */
#if defined(__AVX512F__)
enum { GN_STREAM_BYTES = 64 };
#define GN_STREAM_F32(y, x, h, a, b) \
    _mm512_stream_ps((y), _mm512_fmadd_ps(_mm512_sub_ps(_mm512_loadu_ps(x), (h)), (a), (b)))
#define GN_STREAM_F64(y, x, h, a, b) \
    _mm512_stream_pd((y), _mm512_fmadd_pd(_mm512_sub_pd(_mm512_loadu_pd(x), (h)), (a), (b)))
#define GN_SET_F32 _mm512_set1_ps
#define GN_SET_F64 _mm512_set1_pd
#define GN_LOAD_F32 _mm512_loadu_ps
#define GN_LOAD_F64 _mm512_loadu_pd
#elif defined(__AVX2__) && defined(__FMA__)
enum { GN_STREAM_BYTES = 32 };
#define GN_STREAM_F32(y, x, h, a, b) \
    _mm256_stream_ps((y), _mm256_fmadd_ps(_mm256_sub_ps(_mm256_loadu_ps(x), (h)), (a), (b)))
#define GN_STREAM_F64(y, x, h, a, b) \
    _mm256_stream_pd((y), _mm256_fmadd_pd(_mm256_sub_pd(_mm256_loadu_pd(x), (h)), (a), (b)))
#define GN_SET_F32 _mm256_set1_ps
#define GN_SET_F64 _mm256_set1_pd
#define GN_LOAD_F32 _mm256_loadu_ps
#define GN_LOAD_F64 _mm256_loadu_pd
#else /* SSE2: no FMA, so the ordinary loop is a multiply then an add too */
enum { GN_STREAM_BYTES = 16 };
#define GN_STREAM_F32(y, x, h, a, b) \
    _mm_stream_ps((y), _mm_add_ps(_mm_mul_ps(_mm_sub_ps(_mm_loadu_ps(x), (h)), (a)), (b)))
#define GN_STREAM_F64(y, x, h, a, b) \
    _mm_stream_pd((y), _mm_add_pd(_mm_mul_pd(_mm_sub_pd(_mm_loadu_pd(x), (h)), (a)), (b)))
#define GN_SET_F32 _mm_set1_ps
#define GN_SET_F64 _mm_set1_pd
#define GN_LOAD_F32 _mm_loadu_ps
#define GN_LOAD_F64 _mm_loadu_pd
#endif

/* The stores need aligned addresses: elements before the first aligned one
 * and after the last whole vector are stored the ordinary way. `step` 0: one
 * (head, a, b) for the run (NCHW); 1: one per element (NHWC's tables). A y
 * that is not even element-aligned (a view of a byte buffer) is stored the
 * ordinary way throughout. */
#define GN_DEFINE_AFFINE_STREAM(NAME, T, SUFFIX)                                            \
    static inline void NAME(const T* x, T* y, ptrdiff_t n, const T* head, const T* a,      \
                            const T* b, ptrdiff_t step) {                                   \
        enum { W = GN_STREAM_BYTES / sizeof(T) };                                            \
        ptrdiff_t i = 0, vectors = 0;                                                        \
        if ((uintptr_t)y % sizeof(T) == 0) {                                                 \
            while (i < n && (uintptr_t)(y + i) % GN_STREAM_BYTES != 0) {                     \
                y[i] = (x[i] - head[i * step]) * a[i * step] + b[i * step];                  \
                i++;                                                                         \
            }                                                                                \
            vectors = (n - i) / W;                                                           \
        }                                                                                    \
        if (step) {                                                                          \
            for (; vectors > 0; vectors--, i += W)                                           \
                GN_STREAM_##SUFFIX(y + i, x + i, GN_LOAD_##SUFFIX(head + i),                 \
                                   GN_LOAD_##SUFFIX(a + i), GN_LOAD_##SUFFIX(b + i));        \
        } else {                                                                             \
            for (; vectors > 0; vectors--, i += W)                                           \
                GN_STREAM_##SUFFIX(y + i, x + i, GN_SET_##SUFFIX(*head), GN_SET_##SUFFIX(*a), \
                                   GN_SET_##SUFFIX(*b));                                     \
        }                                                                                    \
        for (; i < n; i++)                                                                   \
            y[i] = (x[i] - head[i * step]) * a[i * step] + b[i * step];                      \
    }

GN_DEFINE_AFFINE_STREAM(gn_affine_stream_f32, float, F32)
GN_DEFINE_AFFINE_STREAM(gn_affine_stream_f64, double, F64)

/* NHWC: n elements whose coefficients repeat every `line` elements (lane j
 * = i % line; line >= W), over a whole block, so that only the block's ends
 * are stored the ordinary way. A vector may run past a line's end: the
 * tables hold lanes 0..W-1 again after lane line - 1. */
#define GN_DEFINE_AFFINE_STREAM_ROWS(NAME, T, SUFFIX)                                       \
    static inline void NAME(const T* x, T* y, ptrdiff_t n, ptrdiff_t line, const T* head,  \
                            const T* a, const T* b) {                                       \
        enum { W = GN_STREAM_BYTES / sizeof(T) };                                            \
        ptrdiff_t i = 0, j = 0, vectors = 0;                                                 \
        if ((uintptr_t)y % sizeof(T) == 0) {                                                 \
            while (i < n && (uintptr_t)(y + i) % GN_STREAM_BYTES != 0) {                     \
                y[i] = (x[i] - head[j]) * a[j] + b[j];                                       \
                i++;                                                                         \
                if (++j == line) j = 0;                                                      \
            }                                                                                \
            vectors = (n - i) / W;                                                           \
        }                                                                                    \
        for (; vectors > 0; vectors--, i += W) {                                             \
            GN_STREAM_##SUFFIX(y + i, x + i, GN_LOAD_##SUFFIX(head + j),                     \
                               GN_LOAD_##SUFFIX(a + j), GN_LOAD_##SUFFIX(b + j));            \
            j += W;                                                                          \
            if (j >= line) j -= line;                                                        \
        }                                                                                    \
        for (; i < n; i++) {                                                                 \
            y[i] = (x[i] - head[j]) * a[j] + b[j];                                           \
            if (++j == line) j = 0;                                                          \
        }                                                                                    \
    }

GN_DEFINE_AFFINE_STREAM_ROWS(gn_affine_stream_rows_f32, float, F32)
GN_DEFINE_AFFINE_STREAM_ROWS(gn_affine_stream_rows_f64, double, F64)

/* Whether the NHWC plan uses it: with SSE2's 16-byte vectors the wrap test
 * per vector cost more than the split lines saved (1.02-1.09x the per-line
 * calls' time, Zen 4); AVX2 and AVX-512 took 0.80-0.99x. */
#define GNCPU_STREAM_ROWS (GN_STREAM_BYTES >= 32)

static inline void gn_store_fence(void) { _mm_sfence(); }

#else /* no streaming stores: never called (GNCPU_HAVE_STREAM is 0) */
#define GNCPU_HAVE_STREAM 0
#define GNCPU_STREAM_ROWS 0
static inline void gn_affine_stream_f32(const float* x, float* y, ptrdiff_t n, const float* head,
                                        const float* a, const float* b, ptrdiff_t step) {}
static inline void gn_affine_stream_f64(const double* x, double* y, ptrdiff_t n,
                                        const double* head, const double* a, const double* b,
                                        ptrdiff_t step) {}
static inline void gn_affine_stream_rows_f32(const float* x, float* y, ptrdiff_t n,
                                             ptrdiff_t line, const float* head, const float* a,
                                             const float* b) {}
static inline void gn_affine_stream_rows_f64(const double* x, double* y, ptrdiff_t n,
                                             ptrdiff_t line, const double* head, const double* a,
                                             const double* b) {}
static inline void gn_store_fence(void) {}
#endif

#endif
