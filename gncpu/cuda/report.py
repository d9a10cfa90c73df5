"""Print the kernels' resource usage per architecture, compiled without a GPU:

    python -m gncpu.cuda.report            # nvcc (ptxas -v)
    python -m gncpu.cuda.report --nvrtc    # NVRTC with CuPy's run-time options

One row per kernel: registers per thread for each architecture; a final
line states spills and stack frames (there should be none).
"""
import sys

from . import buildcheck, plan as cuda_plan


def resource_table(use_nvrtc=False):
    """{kernel: {arch: KernelResources}} for every supported architecture."""
    table = {}
    for arch in buildcheck.ARCHITECTURES:
        if use_nvrtc:
            _, report, _ = buildcheck.nvrtc_compile(arch, ("--ptxas-options=-v",))
        else:
            _, report = buildcheck.nvcc_compile(arch)
        for res in buildcheck.parse_ptxas_report(report):
            table.setdefault(res.kernel, {})[arch] = res
    return table


def format_table(table):
    archs = buildcheck.ARCHITECTURES
    width = max(map(len, cuda_plan.KERNEL_NAMES))
    lines = [f"{'registers per thread':<{width}}  " + "  ".join(f"{a:>6}" for a in archs)]
    for kernel in cuda_plan.KERNEL_NAMES:
        row = table.get(kernel, {})
        lines.append(f"{kernel:<{width}}  " + "  ".join(
            f"{row[a].registers:>6}" if a in row else f"{'-':>6}" for a in archs))
    everything = [r for row in table.values() for r in row.values()]
    spills = sum(r.spill_store_bytes + r.spill_load_bytes for r in everything)
    stack = max((r.stack_bytes for r in everything), default=0)
    shared = max((r.shared_bytes for r in everything), default=0)
    lines.append(f"block {cuda_plan.BLOCK_THREADS} threads; spill bytes (all kernels, all archs): {spills}; "
                 f"largest stack frame: {stack} bytes; largest static shared memory: {shared} bytes")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    use_nvrtc = "--nvrtc" in argv
    tool = "NVRTC (CuPy's options)" if use_nvrtc else "nvcc"
    print(f"gncpu CUDA kernels compiled by {tool}")
    print(format_table(resource_table(use_nvrtc)))


if __name__ == "__main__":
    main()
