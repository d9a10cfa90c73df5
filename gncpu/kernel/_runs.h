/* Flat vector loops of the plain apply (no activation), one per layout.
 *
 * The NCHW apply for short channel runs (7x7, 8x8 spatial: 49-64 elements):
 * y = (x - head) * a[k] + b[k] over a stretch of consecutive channels, as one
 * flat loop of vectors instead of one loop (with its own head and tail) per
 * channel. A vector that straddles two channels takes each lane's
 * coefficients from the one its element belongs to (a compare and two
 * blends), so a run needs at least one vector's width (hw >= W).
 *
 * And the NHWC apply without activation: y = (x - head[j]) * a[j] + b[j]
 * over `rows` consecutive rows of `width` elements, lane j of every row
 * taking coefficient j (the plan's per-lane tables, L1-resident), in one
 * call per block of rows instead of one loop per row: a row is only 20-40
 * vectors (C = 320-640), and a generic loop's entry (alias checks, an
 * alignment peel, a scalar tail) cost a quarter of the apply's time at one
 * call per row (Zen 4, 1x64x64x320).
 *
 * Same arithmetic per element as the portable loops (one subtract, one
 * multiply-add, contracted alike), so the same bits. Vectors are loaded
 * before they are stored and never overlap: in-place (y == x) is safe.
 */
#ifndef GNCPU_RUNS_H
#define GNCPU_RUNS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "_tuning.h"

#if defined(__GNUC__) || defined(__clang__)
#define GNCPU_HAVE_VECTOR_RUNS 1

/* Vectors of the variant's width (GNCPU_LANES bytes; see _tuning.h) and
 * integer vectors of as many lanes for the blend masks. */
typedef float gn_run_f32 __attribute__((vector_size(GNCPU_LANES)));
typedef int32_t gn_run_i32 __attribute__((vector_size(GNCPU_LANES)));
typedef double gn_run_f64 __attribute__((vector_size(GNCPU_LANES)));
typedef int64_t gn_run_i64 __attribute__((vector_size(GNCPU_LANES)));

/* n elements from x; the first `first` (1..hw) end channel 0's run, then
 * runs of hw; a[k], b[k] are channel k's coefficients. Needs hw >= W. */
#define GN_DEFINE_AFFINE_RUNS(NAME, T, VT, IT, VI)                                          \
    static inline void NAME(const T* x, T* y, ptrdiff_t n, ptrdiff_t first, ptrdiff_t hw,    \
                            T head, const T* a, const T* b) {                               \
        enum { W = sizeof(VT) / sizeof(T) };                                                 \
        IT lane_numbers[W];                                                                  \
        VI lane;                                                                             \
        VT h = (VT){0} + head, v, av, bv;                                                    \
        ptrdiff_t i, j, k = 0, end = first; /* channel k's run ends at element `end` */      \
        for (j = 0; j < W; j++) lane_numbers[j] = (IT)j;                                     \
        memcpy(&lane, lane_numbers, sizeof lane);                                            \
        for (i = 0; i + W <= n; i += W) {                                                    \
            memcpy(&v, x + i, sizeof v);                                                     \
            if (end - i >= W) {  /* the whole vector is channel k's */                      \
                av = (VT){0} + a[k];                                                         \
                bv = (VT){0} + b[k];                                                         \
                if (end == i + W) { k++; end += hw; }                                        \
            } else {             /* lanes before `end`: channel k; the rest: k + 1 */        \
                VI in_k = lane < ((VI){0} + (IT)(end - i));                                  \
                VT a0 = (VT){0} + a[k], a1 = (VT){0} + a[k + 1];                             \
                VT b0 = (VT){0} + b[k], b1 = (VT){0} + b[k + 1];                             \
                av = (VT)(((VI)a0 & in_k) | ((VI)a1 & ~in_k));                              \
                bv = (VT)(((VI)b0 & in_k) | ((VI)b1 & ~in_k));                               \
                k++;                                                                         \
                end += hw;                                                                   \
            }                                                                                \
            v = (v - h) * av + bv;                                                           \
            memcpy(y + i, &v, sizeof v);                                                     \
        }                                                                                    \
        for (; i < n; i++) {                                                                 \
            if (i == end) { k++; end += hw; }                                                \
            y[i] = (x[i] - head) * a[k] + b[k];                                              \
        }                                                                                    \
    }

GN_DEFINE_AFFINE_RUNS(gn_affine_runs_f32, float, gn_run_f32, int32_t, gn_run_i32)
GN_DEFINE_AFFINE_RUNS(gn_affine_runs_f64, double, gn_run_f64, int64_t, gn_run_i64)

/* `rows` rows of `width` elements from x; head, a, b: `width` coefficients. */
#define GN_DEFINE_AFFINE_ROWS(NAME, T, VT)                                                   \
    static inline void NAME(const T* x, T* y, ptrdiff_t rows, ptrdiff_t width,              \
                            const T* head, const T* a, const T* b) {                        \
        enum { W = sizeof(VT) / sizeof(T) };                                                 \
        ptrdiff_t r, j, full = width - width % W;                                            \
        VT v, h, av, bv;                                                                     \
        for (r = 0; r < rows; r++, x += width, y += width) {                                 \
            for (j = 0; j < full; j += W) {                                                  \
                memcpy(&v, x + j, sizeof v);                                                 \
                memcpy(&h, head + j, sizeof h);                                              \
                memcpy(&av, a + j, sizeof av);                                               \
                memcpy(&bv, b + j, sizeof bv);                                               \
                v = (v - h) * av + bv;                                                       \
                memcpy(y + j, &v, sizeof v);                                                 \
            }                                                                                \
            for (; j < width; j++)                                                           \
                y[j] = (x[j] - head[j]) * a[j] + b[j];                                       \
        }                                                                                    \
    }

GN_DEFINE_AFFINE_ROWS(gn_affine_rows_f32, float, gn_run_f32)
GN_DEFINE_AFFINE_ROWS(gn_affine_rows_f64, double, gn_run_f64)

#else /* no vector extensions: the callers keep their portable loops */
#define GNCPU_HAVE_VECTOR_RUNS 0
static inline void gn_affine_runs_f32(const float* x, float* y, ptrdiff_t n, ptrdiff_t first,
                                      ptrdiff_t hw, float head, const float* a, const float* b) {}
static inline void gn_affine_runs_f64(const double* x, double* y, ptrdiff_t n, ptrdiff_t first,
                                      ptrdiff_t hw, double head, const double* a, const double* b) {}
static inline void gn_affine_rows_f32(const float* x, float* y, ptrdiff_t rows, ptrdiff_t width,
                                      const float* head, const float* a, const float* b) {}
static inline void gn_affine_rows_f64(const double* x, double* y, ptrdiff_t rows,
                                      ptrdiff_t width, const double* head, const double* a,
                                      const double* b) {}
#endif

#endif
