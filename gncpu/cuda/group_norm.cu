// Group Normalization forward, float32, for NCHW and NHWC, optional fused SiLU.
//
// Three launches (the grid of each comes from gncpu/cuda/plan.py, which the
// CuPy launcher and the CPU emulation both use):
//   1. gn_stats_*    each block reduces a fixed-size chunk of one (n, g)
//                    group (NCHW; NHWC: a run of rows of a channel tile,
//                    covering one or more groups) to (count, mean, M2), the
//                    mean relative to the group's first element K.
//   2. gn_finalize   one warp per (n, g): merges that group's chunk partials
//                    in chunk order, writes per-(n, c) coefficients
//                    (K, mean - K, rstd * gamma_c, beta_c).
//   3. gn_apply_*    y = ((x - K) - (mean - K)) * a_c + beta_c [then SiLU].
// No atomics: every sum has a fixed shape and order, so results are bitwise
// reproducible run to run, and do not depend on the device (the chunk size
// is fixed by the plan, not by the number of SMs).
//
// Accuracy (same as the CPU kernel): statistics are shifted. Each thread
// accumulates x - s over its elements with s its own first element, turns
// the sums into (count, mean, M2) and from there on only Chan merges are
// used, so no sum of squares is ever taken of far-from-zero data. The group
// mean is kept as K + (mean - K) through the apply: x - K is exact for x
// near K, and (mean - K) is small, so float32 rounding of a mean near 1e4
// (spacing 1e-3) never enters y.
//
// In place (y == x) is safe although x and y are __restrict__: every
// element is read exactly once in the apply, by the thread that then writes
// it, and the statistics kernels finished before.
//
// Index arithmetic: per-group / per-sample element indices are 32-bit
// (the plan rejects groups or samples of 2^31 elements or more); base
// offsets are size_t.

#ifndef GN_BLOCK_THREADS
#define GN_BLOCK_THREADS 256
#endif
#define GN_WARP 32
#define GN_BLOCK_WARPS (GN_BLOCK_THREADS / GN_WARP)
#define GN_FULL_MASK 0xffffffffu

#if GN_BLOCK_THREADS % GN_WARP != 0 || GN_BLOCK_THREADS > 1024
#error "GN_BLOCK_THREADS must be a multiple of 32, at most 1024"
#endif

// Statistics of a set of values: count, mean (relative to the group shift K)
// and M2 = sum of squared deviations from the mean.
struct Moments {
    float count;
    float mean;
    float m2;
};

// max(v, 0) that keeps NaN (fmaxf would turn NaN into 0 and hide bad data).
__device__ __forceinline__ float clamp_nonnegative(float v)
{
    return v < 0.0f ? 0.0f : v;
}

// Chan et al.'s pairwise merge; an empty side leaves the other unchanged.
__device__ __forceinline__ Moments merge_moments(Moments a, Moments b)
{
    if (b.count == 0.0f) return a;
    if (a.count == 0.0f) return b;
    const float count = a.count + b.count;
    const float weight_b = b.count / count;
    const float delta = b.mean - a.mean;
    Moments r;
    r.count = count;
    r.mean = fmaf(delta, weight_b, a.mean);
    r.m2 = a.m2 + b.m2 + delta * delta * a.count * weight_b;
    return r;
}

// Tree reduction over the warp with shuffles; lane 0 ends with the merge of
// all 32 lanes, in an order fixed by lane index. All lanes must call it.
__device__ __forceinline__ Moments warp_reduce_moments(Moments m)
{
#pragma unroll
    for (int offset = GN_WARP / 2; offset > 0; offset /= 2) {
        Moments other;
        other.count = __shfl_down_sync(GN_FULL_MASK, m.count, offset);
        other.mean = __shfl_down_sync(GN_FULL_MASK, m.mean, offset);
        other.m2 = __shfl_down_sync(GN_FULL_MASK, m.m2, offset);
        m = merge_moments(m, other);
    }
    return m;
}

// Merge of every thread's moments; the result is valid in thread 0 only.
// All threads of the block must call it (it contains __syncthreads).
__device__ __forceinline__ Moments block_reduce_moments(Moments m)
{
    __shared__ float warp_count[GN_BLOCK_WARPS];
    __shared__ float warp_mean[GN_BLOCK_WARPS];
    __shared__ float warp_m2[GN_BLOCK_WARPS];
    const unsigned lane = threadIdx.x % GN_WARP;
    const unsigned warp = threadIdx.x / GN_WARP;
    m = warp_reduce_moments(m);
    if (lane == 0) {
        warp_count[warp] = m.count;
        warp_mean[warp] = m.mean;
        warp_m2[warp] = m.m2;
    }
    __syncthreads();
    if (warp == 0) {
        Moments w = {0.0f, 0.0f, 0.0f};
        if (lane < GN_BLOCK_WARPS) {
            w.count = warp_count[lane];
            w.mean = warp_mean[lane];
            w.m2 = warp_m2[lane];
        }
        m = warp_reduce_moments(w);
    }
    return m;
}

// Per-thread accumulator: sums of (x - local_shift) in four independent
// lanes (the loads of a float4, or four scalar elements) so the adds of
// consecutive loads do not wait on each other.
struct ShiftedSums {
    float shift;
    float s1[4];
    float s2[4];
    unsigned count;
};

__device__ __forceinline__ void sums_init(ShiftedSums& acc, float shift)
{
    acc.shift = shift;
    acc.count = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        acc.s1[i] = 0.0f;
        acc.s2[i] = 0.0f;
    }
}

__device__ __forceinline__ void sums_add(ShiftedSums& acc, int lane, float value)
{
    const float d = value - acc.shift;
    acc.s1[lane] += d;
    acc.s2[lane] = fmaf(d, d, acc.s2[lane]);
}

__device__ __forceinline__ void sums_add4(ShiftedSums& acc, float4 v)
{
    sums_add(acc, 0, v.x);
    sums_add(acc, 1, v.y);
    sums_add(acc, 2, v.z);
    sums_add(acc, 3, v.w);
    acc.count += 4;
}

// (count, mean relative to group_shift, M2) of what the thread accumulated.
__device__ __forceinline__ Moments sums_to_moments(const ShiftedSums& acc, float group_shift)
{
    Moments m = {0.0f, 0.0f, 0.0f};
    if (acc.count == 0) return m;
    const float s1 = (acc.s1[0] + acc.s1[1]) + (acc.s1[2] + acc.s1[3]);
    const float s2 = (acc.s2[0] + acc.s2[1]) + (acc.s2[2] + acc.s2[3]);
    const float count = (float)acc.count;
    const float local_mean = s1 / count;
    m.count = count;
    m.mean = (acc.shift - group_shift) + local_mean;
    m.m2 = clamp_nonnegative(fmaf(-s1, local_mean, s2));
    return m;
}

__device__ __forceinline__ float silu(float y)
{
    // y / (1 + e^-y): e^-y overflows to inf for y < -88 and gives -0, the
    // right limit; NaN stays NaN.
    return y / (1.0f + expf(-y));
}

// Coefficients of one (n, c): y = ((x - shift) - mean) * scale + bias.
struct ApplyCoeffs {
    float shift;
    float mean;
    float scale;
    float bias;
};

__device__ __forceinline__ ApplyCoeffs load_coeffs(const float4* __restrict__ coeffs, size_t index)
{
    const float4 c = coeffs[index];
    ApplyCoeffs r = {c.x, c.y, c.z, c.w};
    return r;
}

template <bool SILU>
__device__ __forceinline__ float apply_one(float x, const ApplyCoeffs& c)
{
    const float y = fmaf((x - c.shift) - c.mean, c.scale, c.bias);
    return SILU ? silu(y) : y;
}

__device__ __forceinline__ void write_partial(float* __restrict__ partials, size_t slot, Moments m)
{
    partials[3 * slot + 0] = m.count;
    partials[3 * slot + 1] = m.mean;
    partials[3 * slot + 2] = m.m2;
}

// ---------------------------------------------------------------------------
// 1. Chunk statistics.

// NCHW: group (n, g) is group_size contiguous floats starting at
// (n * G + g) * group_size. VEC4: group_size % 4 == 0 and x 16-byte aligned.
template <bool VEC4>
__device__ __forceinline__ void stats_nchw(const float* __restrict__ x, float* __restrict__ partials,
                                           unsigned group_size, unsigned chunk_size)
{
    const unsigned row = blockIdx.x;
    const unsigned chunk = blockIdx.y;
    const float* group = x + (size_t)row * group_size;
    const float group_shift = group[0];
    const unsigned begin = chunk * chunk_size;
    const unsigned end = min(begin + chunk_size, group_size);

    ShiftedSums acc;
    if (VEC4) {
        const float4* group4 = reinterpret_cast<const float4*>(group);
        const unsigned first = begin / 4 + threadIdx.x;
        const unsigned last = end / 4;
        sums_init(acc, first < last ? group[4 * first] : group_shift);
        for (unsigned i = first; i < last; i += GN_BLOCK_THREADS) sums_add4(acc, group4[i]);
    } else {
        const unsigned first = begin + threadIdx.x;
        sums_init(acc, first < end ? group[first] : group_shift);
        unsigned i = first;
        for (; i + 3 * GN_BLOCK_THREADS < end; i += 4 * GN_BLOCK_THREADS) {
            sums_add(acc, 0, group[i]);
            sums_add(acc, 1, group[i + GN_BLOCK_THREADS]);
            sums_add(acc, 2, group[i + 2 * GN_BLOCK_THREADS]);
            sums_add(acc, 3, group[i + 3 * GN_BLOCK_THREADS]);
            acc.count += 4;
        }
        for (; i < end; i += GN_BLOCK_THREADS) {
            sums_add(acc, 0, group[i]);
            acc.count += 1;
        }
    }
    const Moments m = block_reduce_moments(sums_to_moments(acc, group_shift));
    if (threadIdx.x == 0) write_partial(partials, (size_t)row * gridDim.y + chunk, m);
}

// NHWC, general (any C, any alignment; the plan prefers the tiled kernel
// below): x is (N, HW, C); group (n, g) is the Cg = C / G channels
// [g * Cg, (g + 1) * Cg) of each of the HW rows. The block walks the group's
// elements in (row, channel) order: element k is at row k / Cg, channel
// g * Cg + k % Cg.
__device__ __forceinline__ void stats_nhwc(const float* __restrict__ x, float* __restrict__ partials,
                                           unsigned channels, unsigned groups, unsigned spatial,
                                           unsigned chunk_size)
{
    const unsigned row = blockIdx.x;
    const unsigned chunk = blockIdx.y;
    const unsigned n = row / groups;
    const unsigned g = row - n * groups;
    const unsigned group_channels = channels / groups;
    const unsigned group_size = group_channels * spatial;
    const float* group = x + (size_t)n * spatial * channels + (size_t)g * group_channels;
    const float group_shift = group[0];
    const unsigned begin = chunk * chunk_size;
    const unsigned end = min(begin + chunk_size, group_size);

    ShiftedSums acc;
    const unsigned first = begin + threadIdx.x;
    sums_init(acc, first < end ? group[(size_t)(first / group_channels) * channels + first % group_channels]
                               : group_shift);
    for (unsigned i = first; i < end; i += GN_BLOCK_THREADS) {
        sums_add(acc, 0, group[(size_t)(i / group_channels) * channels + i % group_channels]);
        acc.count += 1;
    }
    const Moments m = block_reduce_moments(sums_to_moments(acc, group_shift));
    if (threadIdx.x == 0) write_partial(partials, (size_t)row * gridDim.y + chunk, m);
}

extern "C" __global__ void __launch_bounds__(GN_BLOCK_THREADS)
gn_stats_nchw(const float* __restrict__ x, float* __restrict__ partials, unsigned group_size, unsigned chunk_size)
{
    stats_nchw<false>(x, partials, group_size, chunk_size);
}

extern "C" __global__ void __launch_bounds__(GN_BLOCK_THREADS)
gn_stats_nchw_vec4(const float* __restrict__ x, float* __restrict__ partials, unsigned group_size,
                   unsigned chunk_size)
{
    stats_nchw<true>(x, partials, group_size, chunk_size);
}

extern "C" __global__ void __launch_bounds__(GN_BLOCK_THREADS)
gn_stats_nhwc(const float* __restrict__ x, float* __restrict__ partials, unsigned channels, unsigned groups,
              unsigned spatial, unsigned chunk_size)
{
    stats_nhwc(x, partials, channels, groups, spatial, chunk_size);
}

// NHWC, tiled (the fast NHWC path): a block reads whole rows of a tile of
// T channels, one float4 column per thread and several rows at a time, so
// every warp reads contiguous memory whatever C/G is (with T == C the whole
// block's reads are one contiguous range). Each thread keeps its four
// channels apart; the per-channel moments meet in shared memory and one warp
// per group merges them in a fixed order.
//
// Needs C % 4 == 0, x 16-byte aligned, T % 4 == 0, T <= 4 * GN_BLOCK_THREADS,
// and tiles cut at group boundaries: T % Cg == 0 (a tile holds whole
// groups) or Cg % T == 0 (a group spans whole tiles). Grid (N * tiles, row
// chunks). The partial of (n, g) from row chunk rc and the group's tile st
// is slot (n * G + g) * (row_chunks * tiles_per_group) + rc * tiles_per_group + st.
#define GN_TILE_ENTRIES (4 * GN_BLOCK_THREADS)

extern "C" __global__ void __launch_bounds__(GN_BLOCK_THREADS)
gn_stats_nhwc_tiled(const float* __restrict__ x, float* __restrict__ partials, unsigned channels,
                    unsigned groups, unsigned spatial, unsigned tile_channels, unsigned rows_per_chunk)
{
    // (row lane, channel of the tile) -> moments; at most 4 * GN_BLOCK_THREADS entries
    __shared__ float tile_mean[GN_TILE_ENTRIES];
    __shared__ float tile_m2[GN_TILE_ENTRIES];
    __shared__ float lane_count[GN_BLOCK_THREADS];

    const unsigned tiles = (channels + tile_channels - 1) / tile_channels;
    const unsigned n = blockIdx.x / tiles;
    const unsigned tile_begin = (blockIdx.x - n * tiles) * tile_channels;
    const unsigned tile_width = min(tile_channels, channels - tile_begin);
    const unsigned group_channels = channels / groups;
    const unsigned columns = tile_channels / 4;
    const unsigned row_lanes = GN_BLOCK_THREADS / columns;
    const unsigned column = threadIdx.x % columns;
    const unsigned row_lane = threadIdx.x / columns;
    const unsigned row_begin = blockIdx.y * rows_per_chunk;
    const unsigned row_end = min(row_begin + rows_per_chunk, spatial);
    const float* sample = x + (size_t)n * spatial * channels;
    const unsigned c0 = tile_begin + 4 * column;

    if (row_lane < row_lanes && 4 * column < tile_width) {
        // each channel's own first value is its local shift; K is its group's
        float shift[4], s1[4], s2[4], group_shift[4];
        unsigned r = row_begin + row_lane;
        const float4 first = r < row_end ? *reinterpret_cast<const float4*>(sample + (size_t)r * channels + c0)
                                         : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        shift[0] = first.x;
        shift[1] = first.y;
        shift[2] = first.z;
        shift[3] = first.w;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            s1[i] = 0.0f;
            s2[i] = 0.0f;
            group_shift[i] = sample[(size_t)((c0 + i) / group_channels) * group_channels];
        }
        unsigned count = 0;
        for (; r < row_end; r += row_lanes) {
            const float4 v = *reinterpret_cast<const float4*>(sample + (size_t)r * channels + c0);
            const float d[4] = {v.x - shift[0], v.y - shift[1], v.z - shift[2], v.w - shift[3]};
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                s1[i] += d[i];
                s2[i] = fmaf(d[i], d[i], s2[i]);
            }
            ++count;
        }
        const float fcount = (float)count;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float local_mean = count ? s1[i] / fcount : 0.0f;
            const unsigned entry = row_lane * tile_channels + 4 * column + i;
            tile_mean[entry] = count ? (shift[i] - group_shift[i]) + local_mean : 0.0f;
            tile_m2[entry] = count ? clamp_nonnegative(fmaf(-s1[i], local_mean, s2[i])) : 0.0f;
        }
        if (column == 0) lane_count[row_lane] = fcount;
    }
    __syncthreads();

    // Merge: a part is the channels of one group inside this tile.
    const unsigned part_width = min(group_channels, tile_channels);
    const unsigned parts = tile_width / part_width;
    const unsigned tiles_per_group = group_channels > tile_channels ? group_channels / tile_channels : 1;
    const unsigned group_tile = group_channels > tile_channels ? (tile_begin % group_channels) / tile_channels : 0;
    const unsigned lane = threadIdx.x % GN_WARP;
    const unsigned entries = part_width * row_lanes;
    for (unsigned part = threadIdx.x / GN_WARP; part < parts; part += GN_BLOCK_WARPS) {
        Moments m = {0.0f, 0.0f, 0.0f};
        for (unsigned e = lane; e < entries; e += GN_WARP) {
            const unsigned l = e / part_width;
            const unsigned entry = l * tile_channels + part * part_width + (e - l * part_width);
            const Moments p = {lane_count[l], tile_mean[entry], tile_m2[entry]};
            m = merge_moments(m, p);
        }
        m = warp_reduce_moments(m);
        if (lane == 0) {
            const unsigned g = (tile_begin + part * part_width) / group_channels;
            const size_t slot = ((size_t)n * groups + g) * ((size_t)gridDim.y * tiles_per_group) +
                                (size_t)blockIdx.y * tiles_per_group + group_tile;
            write_partial(partials, slot, m);
        }
    }
}

// ---------------------------------------------------------------------------
// 2. Finalize: one warp per (n, g) row. Lane l merges chunks l, l + 32, ...
// in order, then the warp tree-merges the lanes: a fixed order, so the
// result does not depend on timing. Rows are warp-uniform, so the warp's
// shuffles always have all 32 lanes.
//
// The group's shift K is its first element: x[n * sample_stride + g * group_stride].
extern "C" __global__ void __launch_bounds__(GN_BLOCK_THREADS)
gn_finalize(const float* __restrict__ x, const float* __restrict__ partials, const float* __restrict__ weight,
            const float* __restrict__ bias, float4* __restrict__ coeffs, unsigned rows, unsigned groups,
            unsigned group_channels, unsigned chunks, unsigned long long sample_stride,
            unsigned long long group_stride, float eps)
{
    const unsigned lane = threadIdx.x % GN_WARP;
    const unsigned row = blockIdx.x * GN_BLOCK_WARPS + threadIdx.x / GN_WARP;
    if (row >= rows) return;  // whole warps only: no barrier follows

    Moments m = {0.0f, 0.0f, 0.0f};
    const float* row_partials = partials + 3 * (size_t)row * chunks;
    for (unsigned chunk = lane; chunk < chunks; chunk += GN_WARP) {
        const Moments p = {row_partials[3 * chunk], row_partials[3 * chunk + 1], row_partials[3 * chunk + 2]};
        m = merge_moments(m, p);
    }
    m = warp_reduce_moments(m);
    const float count = __shfl_sync(GN_FULL_MASK, m.count, 0);
    const float mean = __shfl_sync(GN_FULL_MASK, m.mean, 0);
    const float m2 = __shfl_sync(GN_FULL_MASK, m.m2, 0);

    // count > 0 always (groups are never empty). NaN (from NaN/Inf data)
    // propagates to the whole group's output.
    const float var = m2 / count;
    const float rstd = 1.0f / sqrtf(clamp_nonnegative(var) + eps);
    const unsigned n = row / groups;
    const unsigned g = row - n * groups;
    const float shift = x[(size_t)n * sample_stride + (size_t)g * group_stride];
    for (unsigned j = lane; j < group_channels; j += GN_WARP) {
        const unsigned c = g * group_channels + j;
        coeffs[(size_t)row * group_channels + j] = make_float4(shift, mean, rstd * weight[c], bias[c]);
    }
}

// ---------------------------------------------------------------------------
// 3. Apply. coeffs is indexed by n * C + c.

// NCHW: grid (N * G, chunks) over each group's contiguous elements; element
// k of group row is channel row * Cg + k / HW in the coeffs table.
// VEC4: HW % 4 == 0 (a float4 never straddles two channels) and x, y
// 16-byte aligned.
template <bool VEC4, bool SILU>
__device__ __forceinline__ void apply_nchw(const float* __restrict__ x, const float4* __restrict__ coeffs,
                                           float* __restrict__ y, unsigned group_channels, unsigned spatial,
                                           unsigned chunk_size)
{
    const unsigned row = blockIdx.x;
    const unsigned group_size = group_channels * spatial;
    const unsigned begin = blockIdx.y * chunk_size;
    const unsigned end = min(begin + chunk_size, group_size);
    const size_t base = (size_t)row * group_size;
    const size_t coeff_base = (size_t)row * group_channels;
    if (VEC4) {
        const float4* x4 = reinterpret_cast<const float4*>(x + base);
        float4* y4 = reinterpret_cast<float4*>(y + base);
        for (unsigned i = begin / 4 + threadIdx.x; i < end / 4; i += GN_BLOCK_THREADS) {
            const ApplyCoeffs c = load_coeffs(coeffs, coeff_base + (4 * i) / spatial);
            const float4 v = x4[i];
            y4[i] = make_float4(apply_one<SILU>(v.x, c), apply_one<SILU>(v.y, c), apply_one<SILU>(v.z, c),
                                apply_one<SILU>(v.w, c));
        }
    } else {
        for (unsigned i = begin + threadIdx.x; i < end; i += GN_BLOCK_THREADS) {
            const ApplyCoeffs c = load_coeffs(coeffs, coeff_base + i / spatial);
            y[base + i] = apply_one<SILU>(x[base + i], c);
        }
    }
}

// NHWC: grid (N, chunks) over each sample's HW * C contiguous elements;
// element k is channel k % C. VEC4: C % 4 == 0 and x, y 16-byte aligned.
template <bool VEC4, bool SILU>
__device__ __forceinline__ void apply_nhwc(const float* __restrict__ x, const float4* __restrict__ coeffs,
                                           float* __restrict__ y, unsigned channels, unsigned spatial,
                                           unsigned chunk_size)
{
    const unsigned n = blockIdx.x;
    const unsigned sample_size = channels * spatial;
    const unsigned begin = blockIdx.y * chunk_size;
    const unsigned end = min(begin + chunk_size, sample_size);
    const size_t base = (size_t)n * sample_size;
    const float4* sample_coeffs = coeffs + (size_t)n * channels;
    if (VEC4) {
        const float4* x4 = reinterpret_cast<const float4*>(x + base);
        float4* y4 = reinterpret_cast<float4*>(y + base);
        for (unsigned i = begin / 4 + threadIdx.x; i < end / 4; i += GN_BLOCK_THREADS) {
            const unsigned c = (4 * i) % channels;
            const float4 v = x4[i];
            y4[i] = make_float4(apply_one<SILU>(v.x, load_coeffs(sample_coeffs, c)),
                                apply_one<SILU>(v.y, load_coeffs(sample_coeffs, c + 1)),
                                apply_one<SILU>(v.z, load_coeffs(sample_coeffs, c + 2)),
                                apply_one<SILU>(v.w, load_coeffs(sample_coeffs, c + 3)));
        }
    } else {
        for (unsigned i = begin + threadIdx.x; i < end; i += GN_BLOCK_THREADS)
            y[base + i] = apply_one<SILU>(x[base + i], load_coeffs(sample_coeffs, i % channels));
    }
}

#define GN_DEFINE_APPLY(name, layout, vec4, silu)                                                          \
    extern "C" __global__ void __launch_bounds__(GN_BLOCK_THREADS)                                         \
    name(const float* __restrict__ x, const float4* __restrict__ coeffs, float* __restrict__ y,           \
         unsigned channels_or_group_channels, unsigned spatial, unsigned chunk_size)                      \
    {                                                                                                      \
        layout<vec4, silu>(x, coeffs, y, channels_or_group_channels, spatial, chunk_size);                 \
    }

GN_DEFINE_APPLY(gn_apply_nchw, apply_nchw, false, false)
GN_DEFINE_APPLY(gn_apply_nchw_vec4, apply_nchw, true, false)
GN_DEFINE_APPLY(gn_apply_nchw_silu, apply_nchw, false, true)
GN_DEFINE_APPLY(gn_apply_nchw_vec4_silu, apply_nchw, true, true)
GN_DEFINE_APPLY(gn_apply_nhwc, apply_nhwc, false, false)
GN_DEFINE_APPLY(gn_apply_nhwc_vec4, apply_nhwc, true, false)
GN_DEFINE_APPLY(gn_apply_nhwc_silu, apply_nhwc, false, true)
GN_DEFINE_APPLY(gn_apply_nhwc_vec4_silu, apply_nhwc, true, true)

// NHWC, tiled (the fast NHWC apply): like gn_stats_nhwc_tiled, a block
// covers a row chunk of a tile of T channels with one float4 column per
// thread, so each thread loads its four channels' coefficients once and then
// only streams x to y. Needs C % 4 == 0, T % 4 == 0, C % T == 0, x and y
// 16-byte aligned. Grid (N * C / T, row chunks).
template <bool SILU>
__device__ __forceinline__ void apply_nhwc_tiled(const float* __restrict__ x, const float4* __restrict__ coeffs,
                                                 float* __restrict__ y, unsigned channels, unsigned spatial,
                                                 unsigned tile_channels, unsigned rows_per_chunk)
{
    const unsigned tiles = channels / tile_channels;
    const unsigned n = blockIdx.x / tiles;
    const unsigned tile_begin = (blockIdx.x - n * tiles) * tile_channels;
    const unsigned columns = tile_channels / 4;
    const unsigned row_lanes = GN_BLOCK_THREADS / columns;
    const unsigned column = threadIdx.x % columns;
    const unsigned row_lane = threadIdx.x / columns;
    if (row_lane >= row_lanes) return;  // no barrier in this kernel
    const unsigned c0 = tile_begin + 4 * column;
    const float4* sample_coeffs = coeffs + (size_t)n * channels;
    const ApplyCoeffs k0 = load_coeffs(sample_coeffs, c0);
    const ApplyCoeffs k1 = load_coeffs(sample_coeffs, c0 + 1);
    const ApplyCoeffs k2 = load_coeffs(sample_coeffs, c0 + 2);
    const ApplyCoeffs k3 = load_coeffs(sample_coeffs, c0 + 3);
    const size_t base = (size_t)n * spatial * channels + c0;
    const unsigned row_end = min(blockIdx.y * rows_per_chunk + rows_per_chunk, spatial);
    for (unsigned r = blockIdx.y * rows_per_chunk + row_lane; r < row_end; r += row_lanes) {
        const size_t offset = base + (size_t)r * channels;
        const float4 v = *reinterpret_cast<const float4*>(x + offset);
        *reinterpret_cast<float4*>(y + offset) = make_float4(apply_one<SILU>(v.x, k0), apply_one<SILU>(v.y, k1),
                                                             apply_one<SILU>(v.z, k2), apply_one<SILU>(v.w, k3));
    }
}

extern "C" __global__ void __launch_bounds__(GN_BLOCK_THREADS)
gn_apply_nhwc_tiled(const float* __restrict__ x, const float4* __restrict__ coeffs, float* __restrict__ y,
                    unsigned channels, unsigned spatial, unsigned tile_channels, unsigned rows_per_chunk)
{
    apply_nhwc_tiled<false>(x, coeffs, y, channels, spatial, tile_channels, rows_per_chunk);
}

extern "C" __global__ void __launch_bounds__(GN_BLOCK_THREADS)
gn_apply_nhwc_tiled_silu(const float* __restrict__ x, const float4* __restrict__ coeffs, float* __restrict__ y,
                         unsigned channels, unsigned spatial, unsigned tile_channels, unsigned rows_per_chunk)
{
    apply_nhwc_tiled<true>(x, coeffs, y, channels, spatial, tile_channels, rows_per_chunk);
}
