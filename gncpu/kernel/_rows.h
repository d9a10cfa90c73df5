/* The NHWC apply without activation: y = (x - head[j]) * a[j] + b[j] over
 * `rows` consecutive rows of `width` elements, lane j of every row taking
 * coefficient j (the plan's per-lane tables, L1-resident).
 *
 * One call per block of rows instead of one loop per row: a row is only
 * 20-40 vectors (C = 320-640), and a generic loop's entry (alias checks, an
 * alignment peel, a scalar tail) cost a quarter of the apply's time at one
 * call per row (Zen 4, 1x64x64x320). Here a row is its full vectors, then a
 * scalar tail only when width is not a multiple of the vector width.
 *
 * Same arithmetic per element as the portable loop (a subtract, then a
 * multiply-add, contracted alike), so the same bits. Each vector is loaded
 * before it is stored and none overlap: in-place (y == x) is safe.
 */
#ifndef GNCPU_ROWS_H
#define GNCPU_ROWS_H

#include <stddef.h>
#include <string.h>
#include "_tuning.h"

#if defined(__GNUC__) || defined(__clang__)
#define GNCPU_HAVE_VECTOR_ROWS 1

typedef float gn_row_f32 __attribute__((vector_size(GNCPU_LANES)));
typedef double gn_row_f64 __attribute__((vector_size(GNCPU_LANES)));

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

GN_DEFINE_AFFINE_ROWS(gn_affine_rows_f32, float, gn_row_f32)
GN_DEFINE_AFFINE_ROWS(gn_affine_rows_f64, double, gn_row_f64)

#else /* no vector extensions: the caller keeps its per-line loops */
#define GNCPU_HAVE_VECTOR_ROWS 0
static inline void gn_affine_rows_f32(const float* x, float* y, ptrdiff_t rows, ptrdiff_t width,
                                      const float* head, const float* a, const float* b) {}
static inline void gn_affine_rows_f64(const double* x, double* y, ptrdiff_t rows,
                                      ptrdiff_t width, const double* head, const double* a,
                                      const double* b) {}
#endif

#endif
