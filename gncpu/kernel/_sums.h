/* The statistics' inner loop: shifted sums s1 = sum(x - c), s2 = sum((x - c)^2)
 * of a chunk, in many independent lanes folded pairwise in float64.
 *
 * Element i goes to lane i % L; lane j is position j % W of accumulator
 * vector j / W, with 4 vectors of W elements (L = 4 W) for the sums and 4
 * for the squares: 8 vector registers, so nothing spills on any ISA (64 lanes
 * of AVX2 used to take all 16 ymm registers and spill). The vectors' width is
 * the variant's GNCPU_LANES bytes (see _tuning.h), written with GCC vector
 * extensions (clang has them too) rather than left to the autovectorizer:
 * gcc vectorized the plain-array version of this loop with 16 lanes along the
 * wrong axis (strided loads and shuffles, 8x a copy).
 *
 * The result depends on L and on nothing else: the same bits for any thread
 * count (chunks are fixed by the caller), and for the plain C fallback.
 */
#ifndef GNCPU_SUMS_H
#define GNCPU_SUMS_H

#include <stddef.h>
#include <string.h>
#include "_tuning.h"

/* Fold L lanes pairwise (fixed order) in float64. */
#define GN_FOLD_LANES(T, acc, L, out)                       \
    do {                                                    \
        double part_[L];                                    \
        ptrdiff_t j_, width_ = (L);                         \
        for (j_ = 0; j_ < (L); j_++) part_[j_] = (acc)[j_]; \
        while (width_ > 1) {                                \
            width_ /= 2;                                    \
            for (j_ = 0; j_ < width_; j_++)                 \
                part_[j_] = part_[j_] + part_[j_ + width_]; \
        }                                                   \
        *(out) = part_[0];                                  \
    } while (0)

#if defined(__GNUC__) || defined(__clang__)

/* One vector: GNCPU_LANES bytes (16 float32 lanes of AVX-512, 8 of AVX2, 4 of SSE2). */
typedef float gn_vec_f32 __attribute__((vector_size(GNCPU_LANES)));
typedef double gn_vec_f64 __attribute__((vector_size(GNCPU_LANES)));

/* One vector of x[at:at+W] into accumulator pair k (constant k: registers). */
#define GN_SUMS_STEP(k, at)          \
    do {                             \
        memcpy(&v, x + (at), sizeof v); \
        v = v - c;                   \
        d##k += v;                   \
        q##k += v * v;               \
    } while (0)

#define GN_DEFINE_SHIFTED_SUMS(NAME, T, VT)                                             \
    static inline void NAME(const T* x, ptrdiff_t n, T centre, double* s1, double* s2) { \
        enum { W = sizeof(VT) / sizeof(T), L = 4 * W };                                \
        VT d0 = {0}, d1 = {0}, d2 = {0}, d3 = {0}, q0 = {0}, q1 = {0}, q2 = {0}, q3 = {0}; \
        VT v, c = d0 + centre;                                                           \
        T acc_d[L], acc_q[L];                                                            \
        ptrdiff_t i, j;                                                                  \
        for (i = 0; i + L <= n; i += L) {                                                \
            GN_SUMS_STEP(0, i);                                                          \
            GN_SUMS_STEP(1, i + W);                                                      \
            GN_SUMS_STEP(2, i + 2 * W);                                                  \
            GN_SUMS_STEP(3, i + 3 * W);                                                  \
        }                                                                                \
        /* the tail: whole vectors into lanes 0.., then the last < W elements */         \
        if (i + W <= n) GN_SUMS_STEP(0, i);                                              \
        if (i + 2 * W <= n) GN_SUMS_STEP(1, i + W);                                      \
        if (i + 3 * W <= n) GN_SUMS_STEP(2, i + 2 * W);                                  \
        memcpy(acc_d, &d0, sizeof d0);                                                   \
        memcpy(acc_d + W, &d1, sizeof d1);                                               \
        memcpy(acc_d + 2 * W, &d2, sizeof d2);                                           \
        memcpy(acc_d + 3 * W, &d3, sizeof d3);                                           \
        memcpy(acc_q, &q0, sizeof q0);                                                   \
        memcpy(acc_q + W, &q1, sizeof q1);                                               \
        memcpy(acc_q + 2 * W, &q2, sizeof q2);                                           \
        memcpy(acc_q + 3 * W, &q3, sizeof q3);                                           \
        for (j = (n - i) / W * W; i + j < n; j++) {                                      \
            T e = x[i + j] - centre;                                                     \
            acc_d[j] += e;                                                               \
            acc_q[j] += e * e;                                                           \
        }                                                                                \
        GN_FOLD_LANES(T, acc_d, L, s1);                                                  \
        GN_FOLD_LANES(T, acc_q, L, s2);                                                  \
    }

GN_DEFINE_SHIFTED_SUMS(gn_shifted_sums_f32, float, gn_vec_f32)
GN_DEFINE_SHIFTED_SUMS(gn_shifted_sums_f64, double, gn_vec_f64)

#else /* no vector extensions (MSVC): the same lanes as plain arrays */

#define GN_DEFINE_SHIFTED_SUMS(NAME, T, L)                                        \
    static inline void NAME(const T* x, ptrdiff_t n, T centre, double* s1, double* s2) { \
        T acc_d[L] = {0}, acc_q[L] = {0};                                            \
        ptrdiff_t i;                                                                 \
        for (i = 0; i < n; i++) {                                                    \
            T e = x[i] - centre;                                                     \
            acc_d[i % (L)] += e;                                                     \
            acc_q[i % (L)] += e * e;                                                 \
        }                                                                            \
        GN_FOLD_LANES(T, acc_d, L, s1);                                              \
        GN_FOLD_LANES(T, acc_q, L, s2);                                              \
    }

GN_DEFINE_SHIFTED_SUMS(gn_shifted_sums_f32, float, GNCPU_LANES)
GN_DEFINE_SHIFTED_SUMS(gn_shifted_sums_f64, double, GNCPU_LANES / 2)

#endif

#endif
