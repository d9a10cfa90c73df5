"""Every committed exporter model: the embedded engine vs plain onnxruntime.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_onnx_models.py [--reps 30] [--profile]

For each tests/models/*.onnx made by an exporter (torch legacy, torch dynamo,
tf2onnx), a feed is drawn from the declared input shape (symbolic dims: batch
1, spatial 8, length 400) and the model is run by gncpu.onnx.InferenceSession
(the embedded NumPy + gncpu engine, 2 threads) and by onnxruntime (2 intra-op
threads), interleaved (10 gncpu runs, 10 ort runs, ...) so machine noise hits
both, with a 10 ms pause before each batch (onnxruntime's pool threads spin
after a run and would take the next engine's cores).
Printed per model, with the ratios gncpu / ort (lower is better) and their
geometric means: the median and the best batch of wall time, and the median
process CPU time per run (all threads: onnxruntime's pool threads, gncpu's
OpenMP threads): on a shared machine wall times move with the load, CPU time
less so. Outputs are checked against each other.

Then the per-node dispatch cost of the embedded engine: a chain of 200
Identity nodes (pure dispatch) and of 200 Adds of one-element tensors (dispatch
plus the smallest NumPy call), in microseconds per node.

The gncpu benchmarked is the one in this script's tree (set
GNCPU_BENCH_INSTALLED=1 for the installed one); its path is printed first.

--profile also prints, per model, the embedded engine's time per op type
(InferenceSession.run_with_profile) summed over the runs.
"""
import argparse
import glob
import os
import statistics
import time
import warnings

import sys

import numpy as np

THREADS = 2
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "tests", "models")
if os.path.isdir(os.path.join(ROOT, "gncpu")) and "GNCPU_BENCH_INSTALLED" not in os.environ:
    # Benchmark the tree this script is in (a script's own directory, bench/, is what
    # Python puts first on sys.path, so an installed gncpu would win otherwise).
    sys.path.insert(0, ROOT)
EXPORTERS = ("torch_legacy_", "torch_dynamo_", "tf2onnx_")
SYMBOLIC = {"N": 1, "H": 8, "W": 8, "L": 400}


def exporter_models():
    paths = sorted(glob.glob(os.path.join(MODELS, "*.onnx")))
    return [p for p in paths if os.path.basename(p).startswith(EXPORTERS)]


def feed_for(path, rng):
    import onnx

    model = onnx.load(path)
    initializers = {t.name for t in model.graph.initializer}
    feed = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else SYMBOLIC.get(d.dim_param, 1) for d in tensor.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        feed[value.name] = rng.standard_normal(shape).astype(dtype)
    return feed


# Each sample times BATCH back-to-back runs (what a service doing repeated runs sees),
# after a pause: onnxruntime's pool threads spin for a while after a run and would
# take the cores of whichever engine runs next.
BATCH = 10
PAUSE = 0.01


def interleaved(fns, reps, pick=statistics.median):
    """Seconds per run of each of `fns`, batches interleaved: `pick` of the
    batches' wall times, or with pick="all" (median wall, best wall, median
    process CPU time) per fn."""
    wall = [[] for _ in fns]
    cpu = [[] for _ in fns]
    for fn in fns:
        fn()
        fn()
    for _ in range(reps):
        for slot, fn in enumerate(fns):
            time.sleep(PAUSE)
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(BATCH):
                fn()
            wall[slot].append((time.perf_counter() - start) / BATCH)
            cpu[slot].append((time.process_time() - start_cpu) / BATCH)
    if pick == "all":
        return [(statistics.median(w), min(w), statistics.median(c)) for w, c in zip(wall, cpu)]
    return [pick(w) for w in wall]


def _chain_model(op, count):
    from onnx import TensorProto, helper, numpy_helper

    nodes, last = [], "x"
    for i in range(count):
        inputs = [last] if op == "Identity" else [last, "one"]
        nodes.append(helper.make_node(op, inputs, [f"t{i}"]))
        last = f"t{i}"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                              [numpy_helper.from_array(np.ones(1, np.float32), "one")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def dispatch_cost(reps, count=200):
    """Microseconds per node of the embedded engine on a chain of `count` nodes,
    net of a one-node run (the per-run cost)."""
    import gncpu.onnx as gonnx

    x = {"x": np.ones(1, np.float32)}
    result = {}
    for op in ("Identity", "Add"):
        long, short = (gonnx.InferenceSession(_chain_model(op, n), num_threads=THREADS, fuse=False)
                       for n in (count, 1))
        t_long, t_short = interleaved([lambda: long.run(None, x), lambda: short.run(None, x)], reps)
        result[op] = ((t_long - t_short) / count * 1e6, t_short * 1e6)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--profile", action="store_true", help="print the embedded engine's time per op type")
    parser.add_argument("--only", default="", help="substring: run only models whose file name contains it")
    args = parser.parse_args(argv)

    import onnxruntime as ort
    from threadpoolctl import threadpool_info

    import gncpu
    import gncpu.onnx as gonnx

    for lib in threadpool_info():
        print(f"# {lib['user_api']}: {lib['internal_api']} {lib.get('version')} kernel={lib.get('architecture')}")
    from gncpu._config import config
    print(f"# gncpu from {os.path.dirname(gncpu.__file__)}")
    print(f"# onnxruntime {ort.__version__}; gncpu " + ", ".join(f"{k}={v}" for k, v in config().items()
                                                              if k in ("kernel_variant", "cpu_supports")))
    print(f"# {THREADS} threads each, wall time per run over {args.reps} interleaved batches of {BATCH} runs")
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    rng = np.random.default_rng(0)
    ratios, best_ratios, cpu_ratios = [], [], []
    print(f"{'':<53} {'----- wall, median -----':>23} {'------ wall, best ------':>23} "
          f"{'------ CPU, median ------':>23}")
    print(f"{'model':<48} {'nodes':>4} " + " ".join([f"{'gncpu ms':>8} {'ort ms':>7} {'ratio':>5}"] * 3))
    for path in exporter_models():
        name = os.path.basename(path)[:-5]
        if args.only not in name:
            continue
        feed = feed_for(path, rng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = gonnx.InferenceSession(path, num_threads=THREADS, **_embedded())
        theirs = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        got, want = ours.run(None, feed), theirs.run(None, feed)
        error = max(float(np.abs(g.astype(np.float64) - w).max() / max(np.abs(w.astype(np.float64)).max(), 1e-30))
                    for g, w in zip(got, want))
        (t_ours, best_ours, cpu_ours), (t_theirs, best_theirs, cpu_theirs) = interleaved(
            [lambda: ours.run(None, feed), lambda: theirs.run(None, feed)], args.reps, pick="all")
        ratios.append(t_ours / t_theirs)
        best_ratios.append(best_ours / best_theirs)
        cpu_ratios.append(cpu_ours / cpu_theirs)
        nodes = ours.stats()["nodes_run"]
        print(f"{name:<48} {nodes:4d} {t_ours * 1e3:8.3f} {t_theirs * 1e3:7.3f} {t_ours / t_theirs:5.2f} "
              f"{best_ours * 1e3:8.3f} {best_theirs * 1e3:7.3f} {best_ours / best_theirs:5.2f} "
              f"{cpu_ours * 1e3:8.3f} {cpu_theirs * 1e3:7.3f} {cpu_ours / cpu_theirs:5.2f}"
              + (f"  (rel err {error:.1e})" if error > 1e-4 else ""))
        if args.profile:
            totals = {}
            for _ in range(args.reps):
                _, profile = ours.run_with_profile(None, feed)
                for op, p in profile.items():
                    calls, seconds = totals.get(op, (0, 0.0))
                    totals[op] = (p["calls"], seconds + p["seconds"] / args.reps)
            top = sorted(totals.items(), key=lambda kv: -kv[1][1])[:6]
            print("      " + ", ".join(f"{op} x{c} {s * 1e3:.3f}" for op, (c, s) in top))
    print(f"# geometric mean ratio gncpu/ort over {len(ratios)} models: wall median {_geomean(ratios):.2f}, "
          f"wall best {_geomean(best_ratios):.2f}, CPU {_geomean(cpu_ratios):.2f}")
    for op, (per_node, per_run) in dispatch_cost(args.reps).items():
        print(f"# dispatch: {op} chain {per_node:.2f} us per node (one-node run {per_run:.1f} us)")


def _geomean(values):
    return float(np.exp(np.mean(np.log(values))))


def _embedded():
    """engine="gncpu" where the session has an engine argument (the embedded engine)."""
    import inspect

    from gncpu.onnx import InferenceSession
    return {"engine": "gncpu"} if "engine" in inspect.signature(InferenceSession).parameters else {}


if __name__ == "__main__":
    main()
