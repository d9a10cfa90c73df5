// Host shim that lets g++ compile an unchanged CUDA .cu file and run its
// kernels on the CPU, one std::thread per CUDA thread.
//
// What it models, and why that is enough for gncpu's kernels:
//   - threadIdx / blockIdx are thread_local; blockDim / gridDim are set per
//     launch before the threads start.
//   - The blocks of a launch run one after another, each by the same pool of
//     blockDim.x threads, so a `__shared__` variable can be a function-local
//     static: it is per block because only one block is alive at a time. A
//     barrier between blocks orders one block's shared-memory use before the
//     next's (ThreadSanitizer sees it).
//   - __syncthreads() is a barrier of all the block's threads; the end of a
//     block is a *different* barrier, so a thread that leaves the kernel while
//     others wait in __syncthreads (undefined behaviour on a GPU) deadlocks
//     here instead of passing silently. Barriers time out and abort with a
//     message rather than hang.
//   - Warp shuffles: each lane writes its value to a per-warp slot, a barrier
//     of the warp's 32 threads, each lane reads its source lane's slot. Two
//     slot sets are used alternately, so one barrier per shuffle is enough.
//     All 32 lanes must take part (full mask), as gncpu's kernels require.
//   - Math functions are the host's (glibc expf, sqrtf, fmaf); CUDA's expf
//     is within 2 ulp of them, far below the tests' tolerance.
// Not modelled: memory coalescing, caches, timing, warp-synchronous code
// without __syncwarp, memory fences, atomics (the kernels use none).
#pragma once

#include <math.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static

struct uint3 {
    unsigned x, y, z;
};

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

struct alignas(16) float4 {
    float x, y, z, w;
};

inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

using std::max;
using std::min;

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

namespace gncpu_emu {

constexpr unsigned kWarpSize = 32;

// Seconds a thread may wait at a barrier before the emulation declares a
// deadlock (divergent __syncthreads or a shuffle without all lanes).
inline double barrier_timeout_seconds = 120.0;

class Barrier {
  public:
    Barrier(unsigned count, const char* what) : count_(count), what_(what) {}

    void arrive_and_wait()
    {
        std::unique_lock<std::mutex> lock(mutex_);
        const unsigned long long generation = generation_;
        if (++arrived_ == count_) {
            arrived_ = 0;
            ++generation_;
            lock.unlock();
            released_.notify_all();
            return;
        }
        const auto limit = std::chrono::duration<double>(barrier_timeout_seconds);
        if (!released_.wait_for(lock, limit, [&] { return generation_ != generation; })) {
            std::fprintf(stderr,
                         "cuda_shim: deadlock at %s: %u of %u threads arrived (block %u,%u,%u; thread %u)\n",
                         what_, arrived_, count_, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x);
            std::abort();
        }
    }

  private:
    std::mutex mutex_;
    std::condition_variable released_;
    const unsigned count_;
    const char* what_;
    unsigned arrived_ = 0;
    unsigned long long generation_ = 0;
};

struct BlockContext {
    explicit BlockContext(unsigned threads)
        : sync_barrier(threads, "__syncthreads"), end_of_block(threads, "end of block"),
          warp_slots(2 * threads)
    {
        for (unsigned w = 0; w < threads / kWarpSize; ++w)
            warp_barriers.push_back(std::make_unique<Barrier>(kWarpSize, "warp shuffle"));
    }
    Barrier sync_barrier;
    Barrier end_of_block;
    std::vector<std::unique_ptr<Barrier>> warp_barriers;
    std::vector<std::uint64_t> warp_slots;  // [parity][thread]
};

inline BlockContext* context = nullptr;
inline thread_local unsigned shuffle_parity = 0;

[[noreturn]] inline void fail(const char* message)
{
    std::fprintf(stderr, "cuda_shim: %s\n", message);
    std::abort();
}

template <class T>
T shuffle(unsigned mask, T value, unsigned source_lane)
{
    static_assert(sizeof(T) <= sizeof(std::uint64_t) && std::is_trivially_copyable_v<T>);
    if (mask != 0xffffffffu) fail("shuffle with a partial mask: gncpu kernels always shuffle full warps");
    const unsigned lane = threadIdx.x % kWarpSize;
    const unsigned warp_base = threadIdx.x - lane;
    std::uint64_t* slots = context->warp_slots.data() + shuffle_parity * blockDim.x + warp_base;
    shuffle_parity ^= 1u;
    std::uint64_t bits = 0;
    std::memcpy(&bits, &value, sizeof(T));
    slots[lane] = bits;
    context->warp_barriers[threadIdx.x / kWarpSize]->arrive_and_wait();
    T result;
    std::memcpy(&result, &slots[source_lane], sizeof(T));
    return result;
}

// Run `kernel` (a callable taking no argument that calls the __global__
// function) over the grid: blockDim.x threads, each running every block in
// turn. 1-D blocks only, a multiple of the warp size.
template <class Kernel>
void launch(dim3 grid, dim3 block, Kernel&& kernel)
{
    if (block.y != 1 || block.z != 1 || block.x == 0 || block.x % kWarpSize != 0 || block.x > 1024)
        fail("launch: blocks must be 1-D with a multiple of 32 threads, at most 1024");
    gridDim = grid;
    blockDim = block;
    BlockContext blocks(block.x);
    context = &blocks;
    std::vector<std::thread> threads;
    threads.reserve(block.x);
    for (unsigned t = 0; t < block.x; ++t) {
        threads.emplace_back([&blocks, &kernel, grid, t] {
            threadIdx = uint3{t, 0, 0};
            shuffle_parity = 0;
            for (unsigned z = 0; z < grid.z; ++z)
                for (unsigned y = 0; y < grid.y; ++y)
                    for (unsigned x = 0; x < grid.x; ++x) {
                        blockIdx = uint3{x, y, z};
                        kernel();
                        blocks.end_of_block.arrive_and_wait();
                    }
        });
    }
    for (auto& thread : threads) thread.join();
    context = nullptr;
}

}  // namespace gncpu_emu

// GNCPU_EMU_DROP_SYNCTHREADS builds a deliberately broken emulation for a
// negative control: ThreadSanitizer must then report the kernels' races.
inline void __syncthreads()
{
#ifndef GNCPU_EMU_DROP_SYNCTHREADS
    gncpu_emu::context->sync_barrier.arrive_and_wait();
#endif
}

template <class T>
T __shfl_sync(unsigned mask, T value, int source_lane, int width = 32)
{
    if (width != 32) gncpu_emu::fail("__shfl_sync: only width 32 is emulated");
    return gncpu_emu::shuffle(mask, value, static_cast<unsigned>(source_lane) % 32u);
}

template <class T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32)
{
    if (width != 32) gncpu_emu::fail("__shfl_down_sync: only width 32 is emulated");
    const unsigned lane = threadIdx.x % 32u;
    // Lanes whose source is past the warp get their own value back, as on a GPU.
    return gncpu_emu::shuffle(mask, value, lane + delta < 32u ? lane + delta : lane);
}

template <class T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32)
{
    if (width != 32) gncpu_emu::fail("__shfl_xor_sync: only width 32 is emulated");
    return gncpu_emu::shuffle(mask, value, (threadIdx.x % 32u) ^ static_cast<unsigned>(lane_mask));
}
