// gncpu's CUDA kernels, compiled unchanged for the CPU through cuda_shim.h,
// behind a C interface shaped like cuLaunchKernel: a kernel name, the grid,
// the block, and an array of pointers to the argument values. The Python
// driver (driver.py) calls it through ctypes with the launches that
// gncpu.cuda.plan produces, the same ones the CuPy launcher sends to a GPU.
#include "cuda_shim.h"

#include "group_norm.cu"

#include <string>
#include <utility>

namespace {

// One character per parameter, so Python can check that the plan passes
// each kernel the C types it declares: p = pointer, I = 32-bit unsigned,
// i = 32-bit int, Q = 64-bit unsigned, f = float.
template <class T>
constexpr char type_code()
{
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_pointer_v<U>) return 'p';
    else if constexpr (std::is_same_v<U, unsigned>) return 'I';
    else if constexpr (std::is_same_v<U, int>) return 'i';
    else if constexpr (std::is_same_v<U, unsigned long long>) return 'Q';
    else if constexpr (std::is_same_v<U, float>) return 'f';
    else static_assert(sizeof(U) == 0, "kernel parameter type without a code");
}

struct KernelEntry {
    const char* name;
    std::string signature;
    void (*launch)(dim3, dim3, void**);
};

template <auto Kernel, class... Args, std::size_t... I>
void launch_unpacked(dim3 grid, dim3 block, void** params, std::index_sequence<I...>)
{
    gncpu_emu::launch(grid, block, [params] { Kernel(*static_cast<std::remove_cv_t<Args>*>(params[I])...); });
}

template <auto Kernel, class... Args>
KernelEntry make_entry(const char* name, void (*)(Args...))
{
    return KernelEntry{name, std::string{type_code<Args>()...},
                       [](dim3 grid, dim3 block, void** params) {
                           launch_unpacked<Kernel, Args...>(grid, block, params,
                                                            std::index_sequence_for<Args...>{});
                       }};
}

#define GN_ENTRY(kernel) make_entry<kernel>(#kernel, kernel)

const std::vector<KernelEntry>& kernels()
{
    static const std::vector<KernelEntry> table = {
        GN_ENTRY(gn_stats_nchw),
        GN_ENTRY(gn_stats_nchw_vec4),
        GN_ENTRY(gn_stats_nhwc),
        GN_ENTRY(gn_stats_nhwc_tiled),
        GN_ENTRY(gn_finalize),
        GN_ENTRY(gn_apply_nchw),
        GN_ENTRY(gn_apply_nchw_vec4),
        GN_ENTRY(gn_apply_nchw_silu),
        GN_ENTRY(gn_apply_nchw_vec4_silu),
        GN_ENTRY(gn_apply_nhwc),
        GN_ENTRY(gn_apply_nhwc_vec4),
        GN_ENTRY(gn_apply_nhwc_silu),
        GN_ENTRY(gn_apply_nhwc_vec4_silu),
        GN_ENTRY(gn_apply_nhwc_tiled),
        GN_ENTRY(gn_apply_nhwc_tiled_silu),
    };
    return table;
}

const KernelEntry* find(const char* name)
{
    for (const auto& entry : kernels())
        if (entry.name == std::string(name)) return &entry;
    return nullptr;
}

}  // namespace

extern "C" {

// Parameter type codes of `name`, or NULL if no such kernel.
const char* emu_signature(const char* name)
{
    const KernelEntry* entry = find(name);
    return entry ? entry->signature.c_str() : nullptr;
}

// Number of kernels, and the name of kernel i (for listing).
int emu_kernel_count() { return static_cast<int>(kernels().size()); }
const char* emu_kernel_name(int i) { return kernels().at(i).name; }

// Launch and wait. Returns 0, or -1 if there is no kernel of that name.
int emu_launch(const char* name, unsigned grid_x, unsigned grid_y, unsigned grid_z, unsigned block_x,
               void** params)
{
    const KernelEntry* entry = find(name);
    if (!entry) return -1;
    dim3 grid;
    grid.x = grid_x;
    grid.y = grid_y;
    grid.z = grid_z;
    dim3 block;
    block.x = block_x;
    entry->launch(grid, block, params);
    return 0;
}

void emu_set_barrier_timeout(double seconds) { gncpu_emu::barrier_timeout_seconds = seconds; }

}  // extern "C"
