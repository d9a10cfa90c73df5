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

/* Statistics chunks are centred on the mean of their first GN_CENTRE_SAMPLES
 * elements (see chunk_moments in _statistics.pxi). */
#define GN_CENTRE_SAMPLES 64

/* The mean of x[0:k], k the largest power of two <= min(n, GN_CENTRE_SAMPLES),
 * pairwise in float64 (exact for a constant run). */
#define GN_DEFINE_LEADING_MEAN_SCALAR(NAME, T)                          \
    static inline double NAME(const T* x, ptrdiff_t n) {                \
        double part[GN_CENTRE_SAMPLES];                                 \
        ptrdiff_t j, k = 1, count;                                      \
        while (2 * k <= n && 2 * k <= GN_CENTRE_SAMPLES) k *= 2;        \
        count = k;                                                      \
        for (j = 0; j < k; j++) part[j] = x[j];                         \
        while (k > 1) {                                                 \
            k /= 2;                                                     \
            for (j = 0; j < k; j++) part[j] = part[j] + part[j + k];    \
        }                                                               \
        return part[0] / count;                                         \
    }

GN_DEFINE_LEADING_MEAN_SCALAR(gn_leading_mean_scalar_f32, float)
GN_DEFINE_LEADING_MEAN_SCALAR(gn_leading_mean_scalar_f64, double)

#if defined(__GNUC__) || defined(__clang__)

/* One vector: GNCPU_LANES bytes (16 float32 lanes of AVX-512, 8 of AVX2, 4 of
 * SSE2), and the float64 vectors of as many lanes that the fold converts to. */
typedef float gn_vec_f32 __attribute__((vector_size(GNCPU_LANES)));
typedef double gn_vec_f32_wide __attribute__((vector_size(2 * GNCPU_LANES)));
typedef double gn_vec_f64 __attribute__((vector_size(GNCPU_LANES)));

/* One vector of x[at:at+W] into accumulator pair k (constant k: registers). */
#define GN_SUMS_STEP(k, src)            \
    do {                                \
        memcpy(&v, (src), sizeof v);    \
        v = v - c;                      \
        d##k += v;                      \
        q##k += v * v;                  \
    } while (0)

/* The pairwise fold of the 4 W lanes, its first two levels as float64
 * vectors: (lane j + lane j + 2W) + (lane j + W + lane j + 3W), then W lanes. */
#define GN_FOLD_VECTORS(T, WIDE, a0, a1, a2, a3, out)                          \
    do {                                                                        \
        WIDE w_ = (__builtin_convertvector(a0, WIDE) + __builtin_convertvector(a2, WIDE)) \
                + (__builtin_convertvector(a1, WIDE) + __builtin_convertvector(a3, WIDE)); \
        double lanes_[W];                                                       \
        memcpy(lanes_, &w_, sizeof w_);                                         \
        GN_FOLD_LANES(double, lanes_, W, out);                                  \
    } while (0)

#define GN_DEFINE_SHIFTED_SUMS(NAME, T, VT, WIDE)                                       \
    static inline void NAME(const T* x, ptrdiff_t n, T centre, double* s1, double* s2) { \
        enum { W = sizeof(VT) / sizeof(T), L = 4 * W };                                \
        VT d0 = {0}, d1 = {0}, d2 = {0}, d3 = {0}, q0 = {0}, q1 = {0}, q2 = {0}, q3 = {0}; \
        VT v, c = d0 + centre, tail = c;                                                 \
        ptrdiff_t i, rest;                                                               \
        for (i = 0; i + L <= n; i += L) {                                                \
            GN_SUMS_STEP(0, x + i);                                                      \
            GN_SUMS_STEP(1, x + i + W);                                                  \
            GN_SUMS_STEP(2, x + i + 2 * W);                                              \
            GN_SUMS_STEP(3, x + i + 3 * W);                                              \
        }                                                                                \
        /* The tail: whole vectors into lanes 0.., then the last < W elements        \
         * padded with the centre (deviation exactly 0; a non-finite centre makes     \
         * the chunk non-finite anyway, and the caller then recomputes exactly). */   \
        rest = n - i;                                                                    \
        memcpy(&tail, x + i + rest / W * W, (rest % W) * sizeof(T));                     \
        if (rest >= W) GN_SUMS_STEP(0, x + i); else GN_SUMS_STEP(0, &tail);              \
        if (rest >= 2 * W) GN_SUMS_STEP(1, x + i + W); else if (rest >= W) GN_SUMS_STEP(1, &tail); \
        if (rest >= 3 * W) GN_SUMS_STEP(2, x + i + 2 * W); else if (rest >= 2 * W) GN_SUMS_STEP(2, &tail); \
        if (rest >= 3 * W) GN_SUMS_STEP(3, &tail);                                        \
        GN_FOLD_VECTORS(T, WIDE, d0, d1, d2, d3, s1);                                    \
        GN_FOLD_VECTORS(T, WIDE, q0, q1, q2, q3, s2);                                    \
    }

GN_DEFINE_SHIFTED_SUMS(gn_shifted_sums_f32, float, gn_vec_f32, gn_vec_f32_wide)
GN_DEFINE_SHIFTED_SUMS(gn_shifted_sums_f64, double, gn_vec_f64, gn_vec_f64)

/* The mean of x[0:GN_CENTRE_SAMPLES], as a pairwise tree in float64: the
 * vectors added pairwise, then their lanes (equal halves at every level, so
 * a constant run gives its value back exactly). */
#define GN_DEFINE_LEADING_MEAN(NAME, T, VT, WIDE)                                  \
    static inline double NAME##_vectors(const T* x) {                               \
        enum { W = sizeof(VT) / sizeof(T), K = GN_CENTRE_SAMPLES / W };              \
        WIDE part[K];                                                                \
        VT v;                                                                        \
        double lanes[W], sum;                                                        \
        int j, width;                                                                \
        for (j = 0; j < K; j++) {                                                    \
            memcpy(&v, x + j * W, sizeof v);                                         \
            part[j] = __builtin_convertvector(v, WIDE);                              \
        }                                                                            \
        for (width = K; width > 1; width /= 2)                                       \
            for (j = 0; j < width / 2; j++) part[j] = part[j] + part[j + width / 2]; \
        memcpy(lanes, &part[0], sizeof lanes);                                       \
        GN_FOLD_LANES(double, lanes, W, &sum);                                       \
        return sum / GN_CENTRE_SAMPLES;                                              \
    }

GN_DEFINE_LEADING_MEAN(gn_leading_mean_f32, float, gn_vec_f32, gn_vec_f32_wide)
GN_DEFINE_LEADING_MEAN(gn_leading_mean_f64, double, gn_vec_f64, gn_vec_f64)

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

static inline double gn_leading_mean_f32_vectors(const float* x) {
    return gn_leading_mean_scalar_f32(x, GN_CENTRE_SAMPLES);
}
static inline double gn_leading_mean_f64_vectors(const double* x) {
    return gn_leading_mean_scalar_f64(x, GN_CENTRE_SAMPLES);
}

#endif

/* The centre of a chunk of n elements: the mean of its first 64 (of the
 * largest power of two of them below that, for a shorter chunk). */
static inline double gn_leading_mean_f32(const float* x, ptrdiff_t n) {
    return n >= GN_CENTRE_SAMPLES ? gn_leading_mean_f32_vectors(x) : gn_leading_mean_scalar_f32(x, n);
}
static inline double gn_leading_mean_f64(const double* x, ptrdiff_t n) {
    return n >= GN_CENTRE_SAMPLES ? gn_leading_mean_f64_vectors(x) : gn_leading_mean_scalar_f64(x, n);
}

#endif
