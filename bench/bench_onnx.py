"""End-to-end ONNX benchmark: gncpu.onnx.InferenceSession vs onnxruntime.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_onnx.py [--channels 256]

Builds (with torch) an SD-VAE-decoder-like block at 64x64: two ResnetBlocks
(GroupNorm -> SiLU -> Conv3x3, twice, plus the skip) and norm_out -> SiLU,
exported by the legacy exporter (opset 17: the Reshape -> InstanceNorm ->
Reshape -> Mul -> Add pattern most SD ONNX files contain). It then times

1. the whole block: gncpu (fused GN) vs onnxruntime, 2 threads each;
2. the GroupNorm + SiLU alone, as exported: the legacy pattern and the
   opset-21 GroupNormalization node (which onnxruntime runs as its function
   body expansion), vs gncpu's fused node on the same file.

Runs are interleaved (gncpu, ort, gncpu, ...) so machine noise hits both;
medians and minima are printed with their ratios (on a shared machine the
minimum is the better estimate of what each can do). Unset the OPENBLAS_* variables for
benchmarks (see design notes); the BLAS kernel in use is printed.
"""
import argparse
import os
import statistics
import tempfile
import time
import warnings

import numpy as np

THREADS = 2


def _build_block(channels, groups):
    import torch
    from torch import nn

    class ResnetBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = nn.GroupNorm(groups, channels, eps=1e-6)
            self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
            self.norm2 = nn.GroupNorm(groups, channels, eps=1e-6)
            self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

        def forward(self, x):
            h = self.conv1(nn.functional.silu(self.norm1(x)))
            return x + self.conv2(nn.functional.silu(self.norm2(h)))

    class DecoderBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.res1, self.res2 = ResnetBlock(), ResnetBlock()
            self.norm_out = nn.GroupNorm(groups, channels, eps=1e-6)

        def forward(self, x):
            return nn.functional.silu(self.norm_out(self.res2(self.res1(x))))

    class GNSiLU(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.GroupNorm(groups, channels, eps=1e-6)

        def forward(self, x):
            return nn.functional.silu(self.norm(x))

    torch.manual_seed(0)
    return DecoderBlock().eval(), GNSiLU().eval()


def _export(module, shape, path, opset):
    import torch
    import contextlib
    import io
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        example = (torch.randn(shape),)
        if opset >= 21:
            torch.onnx.export(module, example, dynamo=True, opset_version=opset,
                              input_names=["x"], output_names=["y"]).save(path)
        else:
            torch.onnx.export(module, example, path, opset_version=opset, dynamo=False,
                              input_names=["x"], output_names=["y"])
    return path


def _interleaved(runners, repeats):
    times = {name: [] for name in runners}
    for name, run in runners.items():  # warm up
        run()
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, {name: min(t) for name, t in times.items()}


def _sessions(path):
    import onnxruntime as ort
    import gncpu.onnx

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    ort_session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = gncpu.onnx.InferenceSession(path, num_threads=THREADS)
    return ours, ort_session


def _compare(label, path, x, repeats, kernel_call=None):
    """Time both sessions on `path`; kernel_call (the bare gncpu.group_norm
    the fused node makes) is interleaved too, to show the session's overhead."""
    ours, theirs = _sessions(path)
    feed = {"x": x}
    a = ours.run(None, feed)[0]
    b = theirs.run(None, feed)[0]
    err = np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)
    runners = {"gncpu": lambda: ours.run(None, feed), "onnxruntime": lambda: theirs.run(None, feed)}
    if kernel_call is not None:
        runners["kernel"] = kernel_call
    medians, minima = _interleaved(runners, repeats)
    stats = ours.stats()
    print(f"{label}  (GN native {stats['group_norm_native']}, SiLU fused {stats['silu_fused']}, "
          f"max rel diff vs onnxruntime {err:.1e})")
    for title, t in (("median", medians), ("min", minima)):
        line = (f"  {title:6s} gncpu {t['gncpu'] * 1e3:9.3f} ms   onnxruntime {t['onnxruntime'] * 1e3:9.3f} ms"
                f"   gncpu/ort {t['gncpu'] / t['onnxruntime']:5.2f}   ort/gncpu {t['onnxruntime'] / t['gncpu']:5.1f}x")
        if kernel_call is not None:
            line += f"   [bare gncpu.group_norm {t['kernel'] * 1e3:.3f} ms]"
        print(line)
    return ours, medians


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=512, help="512: SD VAE decoder at a 64x64 latent")
    parser.add_argument("--groups", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()

    import onnxruntime
    import gncpu
    try:
        from threadpoolctl import threadpool_info
        blas = [f"{i['internal_api']} {i.get('architecture', '')} ({i['num_threads']} threads)"
                for i in threadpool_info() if i["user_api"] == "blas"]
    except ImportError:
        blas = ["threadpoolctl not installed"]
    shape = (1, args.channels, args.size, args.size)
    print(f"gncpu {gncpu.__version__}, onnxruntime {onnxruntime.__version__}, threads {THREADS}, "
          f"BLAS: {', '.join(blas) or 'none found'}; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}")
    print(f"shape {shape}, groups {args.groups}, median of {args.repeats} interleaved runs\n")

    block, gn = _build_block(args.channels, args.groups)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        block_path = _export(block, shape, os.path.join(tmp, "block.onnx"), 17)
        ours, _ = _compare("VAE decoder block (5 GN, legacy opset 17)", block_path, x, args.repeats)
        _, profile = ours.run_with_profile(None, {"x": x})
        total = sum(p["seconds"] for p in profile.values())
        print("  gncpu time by op: " + ", ".join(f"{op} {p['seconds'] / total:.0%}" for op, p in profile.items()))
        weight = gn.norm.weight.detach().numpy()
        bias = gn.norm.bias.detach().numpy()
        import gncpu as _gncpu

        def kernel_call():
            return _gncpu.group_norm(x, args.groups, weight, bias, 1e-6, activation="silu", num_threads=THREADS)

        for opset, label in ((17, "GroupNorm+SiLU, legacy pattern (opset 17)"),
                             (21, "GroupNorm+SiLU, GroupNormalization-21")):
            path = _export(gn, shape, os.path.join(tmp, f"gn{opset}.onnx"), opset)
            _compare(label, path, x, args.repeats * 5, kernel_call)
        from gncpu.kernel import kernels
        dst = np.empty_like(x)
        median, minimum = _interleaved({"copy": lambda: kernels.parallel_copy(x.ravel(), dst.ravel(), THREADS)},
                                       args.repeats * 3)
        print(f"memory copy of the same bytes (floor): median {median['copy'] * 1e3:.3f} ms, "
              f"min {minimum['copy'] * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
