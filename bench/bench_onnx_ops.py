"""Conv / MatMul / Gemm speed: gncpu.onnx's native ops vs onnxruntime, one-node models.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_onnx_ops.py [--quick] [--reps 15] [--cpu-time]

Each case is a one-node ONNX model with its weights as initializers, run by
gncpu.onnx.InferenceSession(num_threads=2) and by onnxruntime (2 intra-op
threads). Runs are interleaved (gncpu, ort, gncpu, ...) so machine noise hits
both, with a 20 ms pause before each (spinning pool threads of the previous
run would otherwise take the next one's cores); the median of each is printed with GFLOP/s and the ratio gncpu / ort
(lower is better; 1.0 = as fast as onnxruntime). The BLAS library NumPy
loaded, and its kernel, are printed first (see design.md on OPENBLAS_*).

--cpu-time runs both on ONE thread and reports the best CPU time of the
calling thread (time.thread_time): on a machine shared with other jobs,
wall-clock times of 2-thread runs swing by 2-10x, while one thread's CPU time
still compares the implementations' efficiency.
"""
import argparse
import statistics
import time

import numpy as np

THREADS = 2


def conv_case(name, n, c, m, spatial, k, stride=1, pad=None, group=1):
    pad = k // 2 if pad is None else pad
    dims = len(spatial)
    out = [(s + 2 * pad - k) // stride + 1 for s in spatial]
    flops = 2 * n * m * (c // group) * k ** dims * int(np.prod(out))
    attrs = dict(strides=[stride] * dims, pads=[pad] * (2 * dims), group=group)
    return name, "Conv", [(n, c, *spatial), (m, c // group, *([k] * dims)), (m,)], attrs, flops


def matmul_case(name, a_shape, b_shape):
    flops = 2 * int(np.prod(a_shape)) * b_shape[-1]
    return name, "MatMul", [a_shape, b_shape], {}, flops


def gemm_case(name, m, k, n):
    return name, "Gemm", [(m, k), (n, k), (n,)], {"transB": 1}, 2 * m * k * n


CASES = [
    conv_case("VAE 512->512 3x3 @64x64", 1, 512, 512, (64, 64), 3),
    conv_case("VAE 256->256 3x3 @128x128", 1, 256, 256, (128, 128), 3),
    conv_case("UNet 320->320 3x3 @64x64", 1, 320, 320, (64, 64), 3),
    conv_case("64->64 3x3 @64x64", 1, 64, 64, (64, 64), 3),
    conv_case("128->128 3x3 s2 @128x128", 1, 128, 128, (128, 128), 3, stride=2, pad=1),
    conv_case("512->512 1x1 @64x64", 1, 512, 512, (64, 64), 1),
    conv_case("4->512 3x3 @64x64 (conv_in)", 1, 4, 512, (64, 64), 3),
    conv_case("wav2vec2 512->512 k3 s2 1-D @1600", 1, 512, 512, (1600,), 3, stride=2, pad=0),
    conv_case("wav2vec2 pos-conv 768 k128 g16 @200", 1, 768, 768, (200,), 128, pad=64, group=16),
    conv_case("depthwise 384 7x7 @56x56", 1, 384, 384, (56, 56), 7, group=384),
    matmul_case("attention 4096x512 @ 512x512", (1, 4096, 512), (512, 512)),
    matmul_case("attn scores 4096x512 @ 512x4096", (1, 4096, 512), (512, 4096)),
    gemm_case("Gemm 64x2048 @ 2048x1000", 64, 2048, 1000),
]
QUICK = {"VAE 512->512 3x3 @64x64", "64->64 3x3 @64x64", "512->512 1x1 @64x64", "wav2vec2 512->512 k3 s2 1-D @1600",
         "attention 4096x512 @ 512x512"}


def _model(op, shapes, attrs):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    x = rng.standard_normal(shapes[0]).astype(np.float32)
    weights = [numpy_helper.from_array((rng.standard_normal(s) * 0.05).astype(np.float32), f"w{i}")
               for i, s in enumerate(shapes[1:])]
    node = helper.make_node(op, ["x"] + [w.name for w in weights], ["y"], **attrs)
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shapes[0]))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), x


# Idle time between timed runs: onnxruntime's pool threads (and OpenMP's) spin for a while
# after a run; without a pause they steal the cores of whichever runs next in this process.
PAUSE = 0.02


def _median_interleaved(fns, reps, clock=time.perf_counter, pick=statistics.median):
    times = [[] for _ in fns]
    for fn in fns:
        fn()  # warm up: allocations, BLAS thread start, first-touch pages
    for _ in range(reps):
        for slot, fn in enumerate(fns):
            time.sleep(PAUSE)
            start = clock()
            fn()
            times[slot].append(clock() - start)
    return [pick(t) for t in times]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=11)
    parser.add_argument("--quick", action="store_true", help="only the main cases")
    parser.add_argument("--cpu-time", action="store_true", help="one thread each, best CPU time of the caller")
    args = parser.parse_args(argv)
    threads = 1 if args.cpu_time else THREADS

    import onnxruntime as ort
    from threadpoolctl import threadpool_info

    import gncpu.onnx as gonnx

    for lib in threadpool_info():
        print(f"# {lib['user_api']}: {lib['internal_api']} {lib.get('version')} kernel={lib.get('architecture')} "
              f"threads={lib['num_threads']}")
    measure = "best thread CPU time" if args.cpu_time else "median wall time"
    print(f"# onnxruntime {ort.__version__}, {threads} thread(s) each, {measure} of {args.reps} interleaved runs")
    print(f"{'case':<40} {'gncpu ms':>9} {'ort ms':>9} {'gncpu GF/s':>10} {'ort GF/s':>9} {'ratio':>6}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    ratios = []
    for name, op, shapes, attrs, flops in CASES:
        if args.quick and name not in QUICK:
            continue
        model, x = _model(op, shapes, attrs)
        ours = gonnx.InferenceSession(model, num_threads=threads)
        theirs = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        y_ours, y_theirs = ours.run(None, {"x": x})[0], theirs.run(None, {"x": x})[0]
        error = float(np.abs(y_ours - y_theirs).max() / max(np.abs(y_theirs).max(), 1e-30))
        clock, pick = (time.thread_time, min) if args.cpu_time else (time.perf_counter, statistics.median)
        t_ours, t_theirs = _median_interleaved([lambda: ours.run(None, {"x": x}), lambda: theirs.run(None, {"x": x})],
                                               args.reps, clock, pick)
        ratios.append(t_ours / t_theirs)
        print(f"{name:<40} {t_ours * 1e3:9.2f} {t_theirs * 1e3:9.2f} {flops / t_ours / 1e9:10.0f} "
              f"{flops / t_theirs / 1e9:9.0f} {t_ours / t_theirs:6.2f}" + (f"  (rel err {error:.1e})" if error > 1e-5 else ""))
    print(f"# geometric mean ratio gncpu/ort: {float(np.exp(np.mean(np.log(ratios)))):.2f}")


if __name__ == "__main__":
    main()
