"""Time one ONNX model on two gncpu source trees (each built in place), interleaved.

    git worktree add /tmp/before 0853f52 && (cd /tmp/before && python setup.py build_ext --inplace -j 2)
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_trees.py /tmp/before . --threads 1 2
    git worktree remove --force /tmp/before

Each tree runs in a worker process of its own (one process cannot import two
gncpus) holding one session per thread count; the driver asks the workers for
one timed run at a time, alternating trees, so machine noise hits both alike.
The model is bench_onnx.py's SD-VAE-decoder block (two ResnetBlocks and
norm_out -> SiLU at 64x64, legacy exporter), built with torch, unless --model
names a file. Prints wall-time medians and minima, CPU-time medians (steadier
on a shared machine), and the ratios second/first per thread count.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile


def worker(model, thread_counts):
    """Serve timed runs: read a thread count per line, answer with the wall and the
    CPU seconds (all threads of the process) one run took."""
    import time
    import warnings

    import numpy as np
    import gncpu.onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sessions = {n: gncpu.onnx.InferenceSession(model, num_threads=n) for n in thread_counts}
    shape = sessions[thread_counts[0]].get_inputs()[0].shape
    feed = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    for session in sessions.values():
        session.run(None, feed)  # warm: derived weights, thread pools
    print(os.path.dirname(os.path.dirname(os.path.abspath(gncpu.__file__))), flush=True)
    for line in sys.stdin:
        start, start_cpu = time.perf_counter(), time.process_time()
        sessions[int(line)].run(None, feed)
        print(time.perf_counter() - start, time.process_time() - start_cpu, flush=True)


def start_worker(tree, model, thread_counts):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    process = subprocess.Popen([sys.executable, "-P", os.path.abspath(__file__), "--worker", model,
                                *map(str, thread_counts)], env=env, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    imported_from = process.stdout.readline().strip()
    if os.path.realpath(imported_from) != os.path.realpath(tree):
        raise SystemExit(f"the worker for {tree} imported gncpu from {imported_from}: build the tree in place")
    return process


def timed_run(process, threads):
    process.stdin.write(f"{threads}\n")
    process.stdin.flush()
    wall, cpu = process.stdout.readline().split()
    return float(wall), float(cpu)


def block_model(path, channels, groups, size):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_onnx import _build_block, _export

    block, _ = _build_block(channels, groups)
    return _export(block, (1, channels, size, size), path, 17)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", help="gncpu source tree (built in place), e.g. the commit before a change")
    parser.add_argument("second", help="the tree to compare with it")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--model", help="an ONNX file with one float32 input 'x' (default: the VAE block)")
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--groups", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or block_model(os.path.join(tmp, "block.onnx"), args.channels, args.groups, args.size)
        trees = [args.first, args.second]
        workers = [start_worker(tree, model, args.threads) for tree in trees]
        times = {(tree, n): [] for tree in trees for n in args.threads}
        for repeat in range(args.repeats):
            for n in args.threads:
                order = trees if repeat % 2 == 0 else trees[::-1]  # neither tree always goes first
                for tree in order:
                    times[tree, n].append(timed_run(workers[trees.index(tree)], n))
        for process in workers:
            process.stdin.close()
            process.wait()

    print(f"model: {args.model or f'VAE decoder block, 1x{args.channels}x{args.size}x{args.size}/{args.groups}'}; "
          f"{args.repeats} interleaved runs per tree and thread count; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}")
    print("ms per run: wall median / min, and CPU time (all threads) median; ratios second/first")
    print(f"{'threads':>7}  {'first wall':>17}  {'second wall':>17}  {'first cpu':>9}  {'second cpu':>10}  "
          f"{'wall median':>11}  {'wall min':>8}  {'cpu median':>10}")
    for n in args.threads:
        (a_wall, a_cpu), (b_wall, b_cpu) = (list(zip(*times[tree, n])) for tree in trees)
        med = statistics.median
        print(f"{n:>7}  {med(a_wall) * 1e3:8.1f} / {min(a_wall) * 1e3:6.1f}  "
              f"{med(b_wall) * 1e3:8.1f} / {min(b_wall) * 1e3:6.1f}  "
              f"{med(a_cpu) * 1e3:9.1f}  {med(b_cpu) * 1e3:10.1f}  "
              f"{med(b_wall) / med(a_wall):11.3f}  {min(b_wall) / min(a_wall):8.3f}  {med(b_cpu) / med(a_cpu):10.3f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:  # started by start_worker(): --worker MODEL THREADS...
        worker(sys.argv[2], [int(n) for n in sys.argv[3:]])
    else:
        main()
