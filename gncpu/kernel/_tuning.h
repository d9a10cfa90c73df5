/* Per-variant tuning constants of the kernels. setup.py passes them for each
 * instruction-set level (see X86_VARIANTS there); these defaults are the
 * AVX-512 ones, for a build that passes none.
 *
 * GNCPU_LANES: independent float32 accumulators per sum in the statistics
 * loop (_sums.h): 4 vectors of the variant's width, so GNCPU_LANES is also
 * that width in bytes (64 = zmm, 32 = ymm, 16 = xmm). float64 gets half as
 * many lanes, in the same registers. 4 vectors each for the sums and the
 * squares keep the adds pipelined and all 8 in registers.
 * The summation order follows GNCPU_LANES, so variants differ in the last
 * bits; each variant is deterministic for every thread count. */
#ifndef GNCPU_TUNING_H
#define GNCPU_TUNING_H

#ifndef GNCPU_LANES
#define GNCPU_LANES 64
#endif

#endif
