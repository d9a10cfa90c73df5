"""End-to-end ONNX benchmark: plain onnxruntime vs gncpu.onnx's two engines.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_onnx.py --channels 512

1. Every committed exporter model (tests/models/*.onnx, inputs as the tests
   feed them: symbolic dims 2 for the batch, 24 elsewhere), then an
   SD-VAE-decoder-like block built with torch at --size (two ResnetBlocks:
   GroupNorm -> SiLU -> Conv3x3, twice, plus the skip; norm_out -> SiLU;
   legacy exporter, opset 17: the Reshape -> InstanceNorm -> Reshape -> Mul ->
   Add pattern most SD ONNX files contain). Each is timed three ways,
   interleaved in one run at 2 threads: plain onnxruntime on the file,
   gncpu.onnx.InferenceSession(engine="onnxruntime") (GroupNorm on gncpu,
   the rest in onnxruntime) and engine="gncpu" (the embedded NumPy engine).
   Columns: ratio to plain onnxruntime (median of per-round ratios, and the
   ratio of the best samples), the
   share of each engine's time in GroupNorm nodes, and the split (regions /
   GroupNorms). Geomeans close the table.
2. (--gn-alone) The GroupNorm + SiLU alone, as exported: the legacy pattern
   and the opset-21 GroupNormalization node (which onnxruntime runs as its
   function body expansion), against the bare gncpu.group_norm call.

Each sample batches enough calls to last >= 2 ms (small models run in tens
of microseconds); contenders take turns sample by sample (the order rotates
each round), and a ratio is the median over rounds of the two contenders'
times in the same round, so a slow moment of the shared machine hits both.
After each sample the bench waits (up to 0.1 s, untimed) until the worker
threads the contender left spinning go idle: onnxruntime's pool spins ~50 ms
of a core after a run, which would otherwise be charged to whichever
contender runs next. Unset the OPENBLAS_* variables for benchmarks (see
design notes); the BLAS kernel in use is printed.
"""
import argparse
import glob
import math
import os
import re
import statistics
import tempfile
import time
import warnings

import numpy as np

from gncpu.bench.timing import quiesce

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


MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests", "models")
SAMPLE_SECONDS = 0.002
QUIET_SECONDS = 0.1


def _calls_per_sample(run):
    """How many calls make one sample last SAMPLE_SECONDS (at least one)."""
    start = time.perf_counter()
    run()
    once = time.perf_counter() - start
    return max(1, int(SAMPLE_SECONDS / max(once, 1e-7)))


def _interleaved(runners, repeats):
    """Per contender: (median, min) seconds per call, and the median over rounds of its
    time / the first contender's time in the same round (paired: a slow moment of the
    shared machine hits both sides of a ratio). The order rotates round by round."""
    for run in runners.values():  # warm up (first-run allocations, onnxruntime's arena)
        run()
    counts = {name: _calls_per_sample(run) for name, run in runners.items()}
    names = list(runners)
    times = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            run, calls = runners[name], counts[name]
            start = time.perf_counter()
            for _ in range(calls):
                run()
            times[name].append((time.perf_counter() - start) / calls)
            # Let the pools this contender left spinning go idle (onnxruntime's spin
            # ~50 ms of a core after a run): else they steal a core from the next one.
            quiesce(QUIET_SECONDS)
    first = times[names[0]]
    return {name: (statistics.median(t), min(t), statistics.median(a / b for a, b in zip(t, first)))
            for name, t in times.items()}


def _plain_onnxruntime(path_or_bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path_or_bytes, options, providers=["CPUExecutionProvider"])


def _gncpu_session(path, engine):
    import gncpu.onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gncpu.onnx.InferenceSession(path, num_threads=THREADS, engine=engine)


def _model_feed(path, batch=2, other=24):
    """The tests' feed: symbolic dims become `batch` (axis 0) or `other`."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    rng = np.random.default_rng(0)
    feeds = {}
    for inp in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else (batch if axis == 0 else other)
                for axis, d in enumerate(inp.type.tensor_type.shape.dim)]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        feeds[inp.name] = (rng.standard_normal(dims) * 2 + 0.5).astype(dtype)
    return feeds


def _group_norm_share(session, feed):
    """Fraction of a profiled run spent in GroupNorm nodes."""
    _, profile = session.run_with_profile(None, feed)
    total = sum(p["seconds"] for p in profile.values()) or 1.0
    return sum(p["seconds"] for op, p in profile.items() if op == "GroupNorm") / total


def _max_rel(got, want):
    want = np.asarray(want, dtype=np.float64)
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / max(np.max(np.abs(want)), 1e-30))


def compare_engines(label, path, feed, repeats, spin_policies=()):
    """One table row: times of plain onnxruntime and both engines on `path`."""
    plain = _plain_onnxruntime(path)
    ours = _gncpu_session(path, "onnxruntime")
    embedded = _gncpu_session(path, "gncpu")
    runners = {"ort": lambda: plain.run(None, feed), "engine=onnxruntime": lambda: ours.run(None, feed),
               "engine=gncpu": lambda: embedded.run(None, feed)}
    from gncpu.onnx import engine_ort
    default_policy = engine_ort.SPIN_POLICY
    for policy in spin_policies:
        engine_ort.SPIN_POLICY = policy
        try:
            variant = _gncpu_session(path, "onnxruntime")
        finally:
            engine_ort.SPIN_POLICY = default_policy
        runners[f"spin={policy}"] = lambda session=variant: session.run(None, feed)
    want = plain.run(None, feed)
    err = max(max(_max_rel(g, w) for g, w in zip(s.run(None, feed), want)) for s in (ours, embedded))
    times = _interleaved(runners, repeats)
    split = ours.stats()["partition"]
    return {"label": label, "times": times, "err": err,
            "gn_share": {"engine=onnxruntime": _group_norm_share(ours, feed),
                         "engine=gncpu": _group_norm_share(embedded, feed)},
            "split": f"{split['regions']}/{split['claimed_group_norms']}"}


def print_table(rows):
    names = [n for n in rows[0]["times"] if n != "ort"]
    head = f"{'model':<52} {'ort ms':>8}" + "".join(f" {n + ' /ort':>26}" for n in names)
    print(head + f" {'GN share ort-eng / gncpu':>25} {'regions/GN':>10} {'max err':>8}")
    for row in rows:
        t = row["times"]
        ort_median, ort_min, _ = t["ort"]
        cells = "".join(f" {t[n][2]:12.2f} (min {t[n][1] / ort_min:5.2f})" for n in names)
        share = row["gn_share"]
        print(f"{row['label']:<52} {ort_median * 1e3:8.3f}{cells} "
              f"{share['engine=onnxruntime']:11.0%} / {share['engine=gncpu']:4.0%}      {row['split']:>10} "
              f"{row['err']:8.1e}")
    return names


def print_geomeans(rows, names, title):
    for name in names:
        ratios = [r["times"][name][2] for r in rows]
        minima = [r["times"][name][1] / r["times"]["ort"][1] for r in rows]
        geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
        geo_min = math.exp(sum(map(math.log, minima)) / len(minima))
        worst = max(zip(ratios, (r["label"] for r in rows)))
        print(f"{title}: {name} / plain onnxruntime geomean {geo:.2f} (of minima {geo_min:.2f}), "
              f"max {worst[0]:.2f} ({worst[1]})")


def _gn_alone(args, tmp, gn, x):
    """GroupNorm + SiLU alone, both export forms, against the bare kernel call."""
    import gncpu as _gncpu

    weight = gn.norm.weight.detach().numpy()
    bias = gn.norm.bias.detach().numpy()
    runners_kernel = {"kernel": lambda: _gncpu.group_norm(x, args.groups, weight, bias, 1e-6, activation="silu",
                                                          num_threads=THREADS)}
    for opset, label in ((17, "GroupNorm+SiLU, legacy pattern (opset 17)"),
                         (21, "GroupNorm+SiLU, GroupNormalization-21")):
        path = _export(gn, x.shape, os.path.join(tmp, f"gn{opset}.onnx"), opset)
        plain, ours = _plain_onnxruntime(path), _gncpu_session(path, "onnxruntime")
        feed = {"x": x}
        t = _interleaved({"ort": lambda: plain.run(None, feed), "gncpu": lambda: ours.run(None, feed),
                          **runners_kernel}, args.repeats)
        print(f"{label}: onnxruntime {t['ort'][0] * 1e3:.3f} ms, gncpu.onnx {t['gncpu'][0] * 1e3:.3f} ms "
              f"(ort/gncpu {t['ort'][0] / t['gncpu'][0]:.1f}x), bare gncpu.group_norm {t['kernel'][0] * 1e3:.3f} ms")
    from gncpu.kernel import kernels
    dst = np.empty_like(x)
    t = _interleaved({"copy": lambda: kernels.parallel_copy(x.ravel(), dst.ravel(), THREADS)}, args.repeats)
    print(f"memory copy of the same bytes (floor): median {t['copy'][0] * 1e3:.3f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=512, help="512: SD VAE decoder at a 64x64 latent")
    parser.add_argument("--groups", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=31,
                        help="rounds (one sample of each contender per round; medians and minima reported)")
    parser.add_argument("--block-repeats", type=int, default=7, help="rounds for the VAE-decoder block")
    parser.add_argument("--models", default=MODELS_DIR, help="folder of .onnx files (default: tests/models)")
    parser.add_argument("--only", default="", help="regex: time only the committed models it matches")
    parser.add_argument("--no-block", action="store_true", help="skip the VAE-decoder block (needs torch)")
    parser.add_argument("--gn-alone", action="store_true", help="also time GroupNorm+SiLU alone")
    parser.add_argument("--spin-policies", nargs="*", default=[], metavar="POLICY",
                        help="also time engine=onnxruntime under these spin policies "
                             "(gncpu.onnx.engine_ort.SPIN_POLICIES: during_run, off, always)")
    args = parser.parse_args()

    import onnxruntime
    import gncpu
    try:
        from threadpoolctl import threadpool_info
        blas = [f"{i['internal_api']} {i.get('architecture', '')} ({i['num_threads']} threads)"
                for i in threadpool_info() if i["user_api"] == "blas"]
    except ImportError:
        blas = ["threadpoolctl not installed"]
    print(f"gncpu {gncpu.__version__}, onnxruntime {onnxruntime.__version__}, threads {THREADS}, "
          f"BLAS: {', '.join(blas) or 'none found'}; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}; "
          f"median (and min) of {args.repeats} interleaved samples\n")

    paths = sorted(glob.glob(os.path.join(args.models, "*.onnx")))
    paths = [p for p in paths if re.search(args.only, os.path.basename(p))]
    rows = [compare_engines(os.path.basename(p)[:-5], p, _model_feed(p), args.repeats, args.spin_policies)
            for p in paths]
    if rows:
        names = print_table(rows)
        print_geomeans(rows, names, f"{len(rows)} committed exporter models")
    if args.no_block:
        return
    shape = (1, args.channels, args.size, args.size)
    block, gn = _build_block(args.channels, args.groups)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        block_path = _export(block, shape, os.path.join(tmp, "block.onnx"), 17)
        print(f"\nVAE-decoder block {shape}, {args.groups} groups, 5 GN + SiLU, legacy export opset 17:")
        print_table([compare_engines("vae_decoder_block", block_path, {"x": x}, args.block_repeats,
                                     args.spin_policies)])
        if args.gn_alone:
            _gn_alone(args, tmp, gn, x)


if __name__ == "__main__":
    main()
