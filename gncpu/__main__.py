"""Command line: `python -m gncpu info | demo | bench | run MODEL.onnx`."""
import argparse
import sys


def _info(args):
    import gncpu

    gncpu.show_config()
    return 0


def _demo(args):
    """Normalize a Stable-Diffusion-sized activation, check it against the
    float64 oracle, and time it against a plain NumPy implementation."""
    import time

    import numpy as np

    import gncpu
    from gncpu import reference

    rng = np.random.default_rng(0)
    shape, groups = (1, 320, 64, 64), 32
    x = (rng.standard_normal(shape) + 1e4).astype(np.float32)  # activations with a large offset
    w = rng.standard_normal(shape[1]).astype(np.float32)
    b = rng.standard_normal(shape[1]).astype(np.float32)

    def numpy_gn(x):
        g = x.reshape(shape[0], groups, -1)
        mean = g.mean(axis=2, keepdims=True)
        var = g.var(axis=2, keepdims=True)
        return ((g - mean) / np.sqrt(var + 1e-5)).reshape(shape) * w[:, None, None] + b[:, None, None]

    def best(fn, reps=30):
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return sorted(times)[len(times) // 2]

    y = gncpu.group_norm(x, groups, w, b)
    ref = reference.group_norm(x, groups, w, b)
    t_gncpu = best(lambda: gncpu.group_norm(x, groups, w, b))
    t_numpy = best(lambda: numpy_gn(x))
    print(f"gncpu {gncpu.__version__}: group_norm on {shape}, {groups} groups, x = 1e4 + N(0,1), "
          f"{gncpu.get_num_threads()} threads")
    print(f"  max |error| vs float64:  gncpu {np.abs(y - ref).max():.2e}   "
          f"numpy float32 {np.abs(numpy_gn(x) - ref).max():.2e}")
    print(f"  median time:             gncpu {t_gncpu * 1e6:8.1f} us   numpy {t_numpy * 1e6:8.1f} us"
          f"   ({t_numpy / t_gncpu:.1f}x)")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gncpu", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="show the build and run-time configuration").set_defaults(fn=_info)
    sub.add_parser("demo", help="check accuracy and time one SD-sized GroupNorm").set_defaults(fn=_demo)
    from .bench import add_bench_command

    add_bench_command(sub)
    # `run` parses its own arguments in gncpu.onnx.cli, imported only when
    # used: importing onnx costs ~0.3 s, and onnx is an optional extra.
    run = sub.add_parser("run", help="run an ONNX model natively and report what ran how "
                                     "(python -m gncpu run --help)", add_help=False)
    run.add_argument("run_args", nargs=argparse.REMAINDER)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["run"]:  # everything after `run` is the ONNX CLI's, --help included
        return _run(argv[1:])
    args = parser.parse_args(argv)
    return args.fn(args)


def _run(run_args):
    try:
        from gncpu.onnx import cli
    except ImportError as exc:
        print(f"python -m gncpu run: {exc}", file=sys.stderr)
        return 2
    return cli.main(run_args)


if __name__ == "__main__":
    sys.exit(main())
