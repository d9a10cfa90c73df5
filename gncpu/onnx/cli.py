"""`python -m gncpu run MODEL.onnx`: load a model, run it, report what ran how.

    python -m gncpu run unet.onnx --repeat 5 --threads 2 --profile
    python -m gncpu run vae.onnx --input latent=z.npy --compare-reference
    python -m gncpu run model.onnx --inputs feeds.npz --dim batch=2 --save out.npz
    python -m gncpu run unet.onnx --engine gncpu --profile     # without onnxruntime

Inputs not given are random (normal floats, small non-negative ints, random
bools) with symbolic dims set by --dim NAME=SIZE (default 1). The report: the
session summary (GroupNorms native / fused, SiLU fused, fallback ops), output
shapes and value ranges, run times, time per op type (--profile; with the
onnxruntime engine: how the graph was split and the time per region) and the
error against onnx.reference (--compare-reference; exit status 1 above
--rtol).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def add_run_command(subparsers) -> argparse.ArgumentParser:
    """Register `run` on the `python -m gncpu` subparsers (returns its parser)."""
    parser = subparsers.add_parser("run", help="run an ONNX model natively and report what ran how",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    parser.set_defaults(fn=run_command)
    return parser


def _add_arguments(parser):
    parser.add_argument("model", help="path to an .onnx file")
    parser.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                        help="feed input NAME from a .npy file (repeatable)")
    parser.add_argument("--inputs", metavar="FILE.npz", help="feed inputs from the arrays of an .npz file, by name")
    parser.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                        help="size of symbolic dim NAME for random inputs (default 1; repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed for random inputs (default 0)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="number of runs (default 1); the first, which warms caches, is reported apart")
    parser.add_argument("--threads", type=int, default=None, help="threads for gncpu kernels and BLAS")
    parser.add_argument("--profile", action="store_true", help="report time per op type")
    parser.add_argument("--compare-reference", action="store_true",
                        help="compare outputs with onnx.reference.ReferenceEvaluator (slow on big models)")
    parser.add_argument("--rtol", type=float, default=1e-4,
                        help="relative tolerance (to each output's max |value|) for --compare-reference")
    parser.add_argument("--no-fuse", action="store_true", help="do not fuse GroupNorm patterns")
    parser.add_argument("--engine", choices=("auto", "onnxruntime", "gncpu"), default="auto",
                        help="onnxruntime: GroupNorm on gncpu, the rest in onnxruntime; gncpu: the embedded "
                             "NumPy engine; auto (default): onnxruntime if installed")
    parser.add_argument("--save", metavar="FILE.npz", help="write the outputs to an .npz file")
    parser.add_argument("--quiet-progress", action="store_true", help="never show the progress line")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gncpu run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    return run_command(parser.parse_args(argv))


def run_command(args) -> int:
    try:
        import gncpu.onnx as gonnx
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from .errors import InvalidModelError

    if args.repeat < 1:
        print(f"error: --repeat={args.repeat} must be >= 1", file=sys.stderr)
        return 2
    try:
        dims = _parse_pairs(args.dim, "--dim", int)
        files = _parse_pairs(args.input, "--input", str)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        session = gonnx.InferenceSession(args.model, num_threads=args.threads, fuse=not args.no_fuse,
                                         engine=args.engine)
    except (InvalidModelError, FileNotFoundError, ValueError, TypeError, ImportError) as exc:
        print(f"error: cannot load {args.model}: {exc}", file=sys.stderr)
        return 2
    try:
        feed = _make_feed(session, files, args.inputs, dims, args.seed)
    except (ValueError, OSError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    progress = _Progress(enabled=not args.quiet_progress)
    try:
        start = time.perf_counter()
        outputs = session.run_with_progress(None, feed, progress)
        first = time.perf_counter() - start
        progress.finish()
        times = []
        for _ in range(args.repeat - 1):
            start = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - start)
        if args.profile:
            outputs, _ = session.run_with_profile(None, feed)
    except ValueError as exc:
        progress.finish()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        progress.finish()
        print(f"error while running: {exc}", file=sys.stderr)
        return 3

    print(session.summary())
    names = [a.name for a in session.get_outputs()]
    print("outputs:")
    for name, value in zip(names, outputs):
        print(f"  {name}: {_describe(value)}")
    print(f"time: first run {first * 1e3:.1f} ms"
          + (f"; {len(times)} more: median {np.median(times) * 1e3:.1f} ms, best {min(times) * 1e3:.1f} ms"
             if times else "")
          + f" (threads: {args.threads if args.threads else 'default'})")
    if args.save:
        np.savez(args.save, **dict(zip(names, outputs)))
        print(f"outputs saved to {args.save}")
    status = 0
    if args.compare_reference:
        status = _compare_reference(args.model, feed, names, outputs, args.rtol)
    return status


def _parse_pairs(items, option, convert):
    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"{option} {item!r} must look like NAME=VALUE")
        try:
            pairs[name] = convert(value)
        except ValueError:
            raise ValueError(f"{option} {item!r}: {value!r} is not a valid value") from None
    return pairs


def _make_feed(session, files, npz_path, dims, seed):
    inputs = session.get_inputs()
    known = {a.name for a in inputs}
    feed = {}
    if npz_path:
        with np.load(npz_path, allow_pickle=False) as archive:
            for name in archive.files:
                if name not in known:
                    raise ValueError(f"--inputs {npz_path}: array {name!r} is not a model input; inputs are {sorted(known)}")
                feed[name] = archive[name]
    for name, path in files.items():
        if name not in known:
            raise ValueError(f"--input {name}={path}: {name!r} is not a model input; inputs are {sorted(known)}")
        feed[name] = np.load(path, allow_pickle=False)
    rng = np.random.default_rng(seed)
    for arg in inputs:
        if arg.name not in feed:
            feed[arg.name] = _random_input(arg, dims, rng)
    return feed


def _random_input(arg, dims, rng):
    shape = []
    for d in arg.shape:
        if isinstance(d, int):
            shape.append(d)
        elif isinstance(d, str):
            shape.append(dims.get(d, 1))
        else:
            shape.append(1)
    type_name = arg.type[len("tensor("):-1] if arg.type.startswith("tensor(") else arg.type
    if type_name in ("float", "double", "float16"):
        dtype = {"float": np.float32, "double": np.float64, "float16": np.float16}[type_name]
        return rng.standard_normal(shape).astype(dtype)
    if type_name == "bool":
        return rng.random(shape) < 0.5
    if type_name.startswith("int") or type_name.startswith("uint"):
        # Small non-negative values: safe as indices, token ids or lengths in most models.
        return rng.integers(0, 4, size=shape).astype(np.dtype(type_name))
    raise ValueError(f"input {arg.name!r} has type {arg.type}: give it with --input or --inputs")


def _describe(value):
    if not isinstance(value, np.ndarray):
        return type(value).__name__
    text = f"{value.dtype} {tuple(value.shape)}"
    if value.size and np.issubdtype(value.dtype, np.number):
        finite = np.isfinite(value).all() if np.issubdtype(value.dtype, np.floating) else True
        work = value.astype(np.float64)
        text += f" min {work.min():.4g} max {work.max():.4g} mean {work.mean():.4g}"
        if not finite:
            text += f" ({int(np.size(value) - np.isfinite(value).sum())} non-finite)"
    return text


def _compare_reference(model_path, feed, names, outputs, rtol):
    from onnx.reference import ReferenceEvaluator

    print("onnx.reference comparison:")
    start = time.perf_counter()
    try:
        reference = ReferenceEvaluator(model_path).run(names, feed)
    except Exception as exc:  # the reference lacks some ops (e.g. com.microsoft ones)
        print(f"  onnx.reference cannot run this model: {type(exc).__name__}: {exc}")
        return 1
    print(f"  reference ran in {time.perf_counter() - start:.2f} s")
    worst = 0.0
    for name, ours, theirs in zip(names, outputs, reference):
        ours, theirs = np.asarray(ours), np.asarray(theirs)
        if ours.shape != theirs.shape:
            print(f"  {name}: SHAPE MISMATCH gncpu {ours.shape} vs reference {theirs.shape}")
            worst = np.inf
            continue
        if not np.issubdtype(theirs.dtype, np.number) or theirs.size == 0:
            same = np.array_equal(ours, theirs)
            print(f"  {name}: {'equal' if same else 'DIFFERENT'}")
            worst = max(worst, 0.0 if same else np.inf)
            continue
        diff = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
        scale = max(np.abs(theirs.astype(np.float64)).max(), np.finfo(np.float32).tiny)
        rel = float(diff.max() / scale)
        worst = max(worst, rel)
        print(f"  {name}: max |diff| {diff.max():.3g}, relative to max |ref| {rel:.3g}"
              f" {'ok' if rel <= rtol else 'ABOVE rtol ' + format(rtol, 'g')}")
    return 0 if worst <= rtol else 1


class _Progress:
    """A progress line on stderr, only once a run has lasted over a second (so
    quick runs print nothing): `\r`-updated on a terminal, a line every 5 s otherwise."""

    def __init__(self, enabled=True, delay=1.0):
        self.enabled = enabled
        self.delay = delay
        self.start = time.perf_counter()
        self.last = 0.0
        self.shown = False
        self.tty = enabled and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()

    def __call__(self, done, total, label):
        if not self.enabled:
            return
        now = time.perf_counter()
        elapsed = now - self.start
        interval = 0.2 if self.tty else 5.0
        if elapsed < self.delay or (now - self.last < interval and done != total):
            return
        self.last = now
        self.shown = True
        text = f"running: node {done}/{total} ({100 * done // total}%) {label:<20} {elapsed:6.1f} s"
        if self.tty:
            sys.stderr.write("\r" + text)
        else:
            sys.stderr.write(text + os.linesep)
        sys.stderr.flush()

    def finish(self):
        if self.shown and self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
