"""`python -m gncpu bench`: time gncpu.group_norm against the copy floor,
NumPy and (when installed) torch, onnxruntime and OpenVINO, interleaved in
one run, and print a markdown report with ratios measured in that run.

    python -m gncpu bench --quick            # ~20 s smoke run
    python -m gncpu bench --threads 1 2 --plot

Writes <out>/group_norm.md, .json (and .png with --plot). See bench/README.md.
"""
import argparse
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from .contenders import (CONTENDERS, Case, Contender, Skipped, Workload, as_numpy, import_optional,
                         make_workload, set_torch_threads, touched_empty)
from .report import (Lookup, accuracy_table, contender_lines, environment, floor_table, fmt_ratio,
                     geomean, has_accuracy, load_average, markdown_table, not_run_lines, plot_ratios,
                     ratio_table, report_header, scaling_table, times_table, write_json)
from .timing import Failure, ForeignLoad, measure, slot_count

# Stable Diffusion UNet GroupNorms whose input fits the last-level cache: the
# floor-ratio target is a geometric mean over exactly these.
SD_SHAPES = ("1x320x64x64/32", "1x640x32x32/32", "1x1280x16x16/32", "1x512x64x64/32")
DEFAULT_SHAPES = SD_SHAPES + (
    "1x128x512x512/32",   # SD VAE decoder: each group (4 MiB) far larger than L2
    "8x256x56x56/32",
    "2x64x128x128/32",
    "1x256x200x304/32",   # detection backbone (FPN) sizes
    "32x64x32x32/32",     # many small groups
    "1x32x64x64/1",       # one group: LayerNorm over C x HW, must split the group
    "4x64x64x64/64",      # InstanceNorm-like (one channel per group)
    "16x512x7x7/32",      # tiny spatial, many samples
    "1x32x8x8/8",         # call overhead
)
QUICK_SHAPES = SD_SHAPES + ("1x32x64x64/1", "16x512x7x7/32", "1x32x8x8/8")
LARGE_BYTES = 16 << 20    # inputs at least this large count as "large" in the scaling target
TINY_SHAPE = "1x32x8x8/8"
BIG_GROUP_SHAPE = "1x128x512x512/32"
ONE_GROUP_SHAPE = "1x32x64x64/1"


@dataclass
class Settings:
    """How hard to measure (see timing.measure) and what to feed."""
    warmup_rounds: int = 3
    min_rounds: int = 15
    max_rounds: int = 10_000
    budget: float = 2.0          # seconds of timed rounds per (shape, threads)
    sample_time: float = 5e-3    # seconds per sample (calls are batched up to this)
    quiet_limit: float = 0.05    # wait up to this long for spinning worker threads after a sample
    rotate_bytes: int = 64 << 20  # bytes of input one pass over the slots reads
    max_slots: int = 1024
    offset: float = 0.0          # inputs are offset + N(0, 1)
    seed: int = 0
    check: bool = True           # compare every output with the float64 oracle


def parse_cases(texts):
    """Shape strings (each may hold several, comma-separated) -> [Case]."""
    cases = []
    for text in texts:
        cases += [Case.parse(part) for part in text.split(",") if part.strip()]
    if not cases:
        raise ValueError("no shapes given: expected e.g. 1x320x64x64/32")
    return cases


def _max_error(result, expected):
    """(max |result - expected| where expected is finite (nan if the result
    is not finite there), count of such non-finite results)."""
    got = as_numpy(result).astype(np.float64, copy=False)
    if got.shape != expected.shape:
        raise ValueError(f"output shape {got.shape} != expected {expected.shape}")
    finite = np.isfinite(expected)
    bad = int(np.count_nonzero(~np.isfinite(got) & finite))
    if bad:
        return math.nan, bad
    diff = np.abs(got - expected)[finite]
    return (float(diff.max()) if diff.size else 0.0), 0


def _oracle(work, computes):
    from .. import reference

    kwargs = {"activation": "silu"} if computes == "group_norm+silu" else {}
    if computes not in ("group_norm", "group_norm+silu"):
        raise ValueError(f"unknown computes={computes!r}")
    return reference.group_norm(work.inputs[0], work.case.groups, work.weight, work.bias,
                                work.eps, **kwargs)


def _stats_entry(stats):
    return {"status": "ok", "median_us": stats.median * 1e6, "q1_us": stats.q1 * 1e6,
            "q3_us": stats.q3 * 1e6, "min_us": stats.minimum * 1e6, "spread": stats.spread,
            "samples": stats.samples, "kept": stats.kept, "inner": stats.inner}


def _failure(exc):
    return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}


def _prepare(contender, work, threads, settings, expected, oracle):
    """(entry, run): run is None when the contender is skipped or broke.
    The output is checked right after its call: output slots are shared and
    the next contender overwrites them."""
    try:
        run = contender.prepare(work, threads)
    except Skipped as skip:
        return {"status": "skipped", "reason": skip.reason}, None
    except Exception as exc:  # a peer that breaks is reported, not fatal
        return _failure(exc), None
    entry = {}
    if settings.check and contender.computes:
        try:
            result = run(0)
            if contender.computes not in expected:
                expected[contender.computes] = oracle(work, contender.computes)
            entry["max_abs_error"], entry["nonfinite"] = _max_error(result, expected[contender.computes])
        except Exception as exc:
            return _failure(exc), None
    if getattr(run, "detail", None):
        entry["detail"] = run.detail
    return entry, run


def run_suite(cases, contenders, threads_list, settings, *, oracle=_oracle, log=None):
    """Measure every contender on every case at every thread count.

    Case-major: one set of input slots and one oracle result per case, then
    the thread counts back to back, so a 2-vs-1-thread ratio compares
    measurements seconds apart. Returns a list of plain-dict runs (JSON-ready).
    """
    log = log or (lambda message: None)
    runs = []
    total = len(cases) * len(threads_list)
    for case in cases:
        slots = slot_count(case.nbytes, settings.rotate_bytes, settings.max_slots)
        work = make_workload(case, slots, offset=settings.offset, seed=settings.seed)
        expected = {}
        for threads in threads_list:
            started = time.perf_counter()
            entries, runners = {}, {}
            for contender in contenders:
                entries[contender.name], run = _prepare(contender, work, threads, settings, expected, oracle)
                if run is not None:
                    runners[contender.name] = run
            meter = ForeignLoad().start()
            timed = measure(runners, slots, warmup_rounds=settings.warmup_rounds,
                            min_rounds=settings.min_rounds, max_rounds=settings.max_rounds,
                            budget=settings.budget, sample_time=settings.sample_time,
                            quiet_limit=settings.quiet_limit, seed=settings.seed)
            foreign_load = meter.stop()
            for name, stats in timed.items():
                if isinstance(stats, Failure):
                    entries[name] = {"status": "failed", "reason": stats.error}
                else:
                    entries[name].update(_stats_entry(stats))
            runs.append({"case": case.label, "shape": list(case.shape), "groups": case.groups,
                         "mib": case.nbytes / (1 << 20), "slots": slots, "threads": threads,
                         "foreign_load": foreign_load,
                         "results": {c.name: entries[c.name] for c in contenders}})
            log(f"[{len(runs)}/{total}] {case.label:>18} {threads} thread(s): {slots} slot(s), "
                f"{time.perf_counter() - started:.1f} s")
            del runners
        del work, expected
    return runs


# --- the group_norm report ----------------------------------------------------------

def _peers(lookup):
    """Contenders gncpu is compared with: all but the floor and gncpu's own variants."""
    return [n for n in lookup.names() if n != "floor" and not n.startswith("gncpu")]


def _targets(lookup):
    """The figures the speed issue states its targets in, at 2 threads."""
    t = lookup.main_threads()
    threads = f"{t} thread{'s' if t > 1 else ''}"
    have = set(lookup.cases)
    lines = []

    def bullet(text, value):
        lines.append(f"- {text}: **{value}**")

    sd = [c for c in SD_SHAPES if c in have]
    if sd:
        bullet(f"gncpu / copy floor, geomean over the cache-resident SD shapes ({', '.join(sd)}), {threads}",
               fmt_ratio(geomean([lookup.ratio(c, t, "gncpu", "floor") for c in sd])))
    if BIG_GROUP_SHAPE in have:
        bullet(f"gncpu / copy floor on {BIG_GROUP_SHAPE}, {threads}",
               fmt_ratio(lookup.ratio(BIG_GROUP_SHAPE, t, "gncpu", "floor")))
    for name in _peers(lookup):
        measured = [r for r in (lookup.ratio(c, t, name, "gncpu") for c in lookup.cases) if r]
        if measured:
            bullet(f"gncpu speedup vs {lookup.label(name)}, geomean over {len(measured)} shapes, {threads} "
                   f"(min {fmt_ratio(min(measured))}, max {fmt_ratio(max(measured))})",
                   fmt_ratio(geomean(measured)))
        else:
            bullet(f"gncpu speedup vs {lookup.label(name)}", "not measured (see below)")
    if 1 in lookup.threads and t != 1:
        scaled = [c for c in lookup.cases if c == ONE_GROUP_SHAPE or lookup.mib(c) * (1 << 20) >= LARGE_BYTES]
        parts = []
        for c in scaled:
            a, b = lookup.median(c, 1, "gncpu"), lookup.median(c, t, "gncpu")
            parts.append(f"{c} {fmt_ratio(a / b) if a and b else '—'}")
        if parts:
            bullet(f"gncpu {t}-thread vs 1-thread speedup (one group, and inputs >= {LARGE_BYTES >> 20} MiB)",
                   "; ".join(parts))
    if TINY_SHAPE in have:
        for name, how in (("gncpu", "out= given"), ("gncpu-alloc", "allocating its output")):
            entry = lookup.entry(TINY_SHAPE, t, name)
            if entry and entry.get("status") == "ok":
                bullet(f"whole-call median of gncpu.group_norm on {TINY_SHAPE}, {how}, {threads} (µs)",
                       f"{entry['median_us']:.2f} (IQR {entry['q1_us']:.2f}–{entry['q3_us']:.2f})")
    return lines


def variant_table(lookup):
    """One row per (kernel variant, thread count): the target figures, each a
    ratio measured in this run (geomean over the shapes the variant ran)."""
    variants = [n for n in lookup.names() if n.startswith("gncpu-") and n != "gncpu-alloc"]
    peer = "torch" if "torch" in lookup.names() else None
    rows = []
    for name in variants:
        for t in lookup.threads:
            floor = [lookup.ratio(c, t, name, "floor") for c in lookup.cases]
            if not any(floor):
                continue
            row = [lookup.label(name), str(t), fmt_ratio(geomean(floor)),
                   fmt_ratio(max((r for r in floor if r), default=None))]
            if peer:
                speedups = [lookup.ratio(c, t, peer, name) for c in lookup.cases]
                measured = [(r, c) for r, c in zip(speedups, lookup.cases) if r]
                slowest = min(measured) if measured else None
                row += [fmt_ratio(geomean([r for r, _ in measured])),
                        f"{fmt_ratio(slowest[0])} ({slowest[1]})" if slowest else "—"]
            rows.append(row)
    if not rows:
        return None
    header = ["variant", "threads", "time / copy floor (geomean)", "worst shape / floor"]
    if peer:
        header += [f"speedup vs {lookup.label(peer)} (geomean)", "lowest speedup (shape)"]
    return markdown_table(header, rows)


def group_norm_report(data):
    """The markdown report of a group_norm run (the dict written to the JSON)."""
    lookup = Lookup(data)
    everyone = lookup.names()
    others = lookup.names(exclude=("floor",))
    peers = _peers(lookup)
    lines = report_header(data, "gncpu group_norm benchmark")
    lines += ["", "## Targets", ""] + _targets(lookup)
    variants = variant_table(lookup)
    if variants:
        lines += ["", "## Per kernel variant", "",
                  "Each compiled instruction-set level of gncpu's kernel, called directly in the same "
                  "interleaved rounds:", "", variants]
    not_run = not_run_lines(lookup)
    if not_run:
        lines += ["", "Not measured:", ""] + not_run
    for t in sorted(lookup.threads, reverse=True):
        lines += ["", f"## {t} thread{'s' if t > 1 else ''}", "",
                  "Median time per call (µs):", "", times_table(lookup, t, everyone)]
        if "floor" in everyone and others:
            lines += ["", "Time / copy floor (1.0 = a parallel memcpy of the same bytes; lower is better):", "",
                      floor_table(lookup, t, others)]
        if "gncpu" in everyone and peers:
            lines += ["", "gncpu speedup (peer time / gncpu time; above 1 = gncpu faster):", "",
                      ratio_table(lookup, t, [(f"vs {lookup.label(n)}", n, "gncpu") for n in peers])]
    if len(lookup.threads) > 1:
        few, many = lookup.threads[0], lookup.threads[-1]
        lines += ["", f"## {many}-thread vs {few}-thread speedup (time at {few} / time at {many})", "",
                  scaling_table(lookup, few, many, everyone)]
    if has_accuracy(lookup):
        lines += ["", "## Accuracy: max |y − float64 oracle| (worst over thread counts)", "",
                  accuracy_table(lookup, [c["name"] for c in lookup.contenders if c.get("computes")])]
    lines += ["", "Contenders:", ""] + contender_lines(lookup)
    return "\n".join(lines) + "\n"


def floor_plot(data, path, title, names=None):
    """Time / copy floor per shape, one panel per thread count."""
    lookup = Lookup(data)
    names = names or lookup.names(exclude=("floor",))
    panels = []
    for t in sorted(lookup.threads, reverse=True):
        series = {lookup.label(n): [lookup.ratio(c, t, n, "floor") for c in lookup.cases] for n in names}
        panels.append((f"{t} thread{'s' if t > 1 else ''}", lookup.cases, series))
    plot_ratios(path, title, panels)


def group_norm_plot(data, path):
    floor_plot(data, path, "GroupNorm time / copy floor (lower is better)")


# --- command line -------------------------------------------------------------------

def add_common_options(parser, default_shapes, quick_shapes, contender_names, default_out="bench-results"):
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], metavar="N",
                        help="thread counts to run every contender at (default: 1 2)")
    parser.add_argument("--shapes", nargs="+", metavar="NxCxHxW/G",
                        help="shapes to run, e.g. 1x320x64x64/32 (default: the built-in set; "
                             f"--quick: {len(quick_shapes)} of them)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer shapes and rounds: a smoke run in under 30 s")
    parser.add_argument("--only", metavar="NAMES",
                        help=f"comma-separated contenders to run (of {', '.join(contender_names)})")
    parser.add_argument("--skip", metavar="NAMES", help="comma-separated contenders not to run")
    parser.add_argument("--offset", type=float, default=0.0, metavar="F",
                        help="inputs are OFFSET + N(0,1); 1e4 shows who loses accuracy (default 0)")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="timed seconds per shape and thread count (default 2, --quick 0.2)")
    parser.add_argument("--min-rounds", type=int, metavar="N", help="at least N rounds (default 15, --quick 3)")
    parser.add_argument("--warmup", type=int, metavar="N", help="untimed rounds first (default 3, --quick 1)")
    parser.add_argument("--sample-ms", type=float, metavar="MS",
                        help="batch short calls into samples of about this many ms (default 5, --quick 2)")
    parser.add_argument("--quiet-ms", type=float, default=50.0, metavar="MS",
                        help="after each sample wait up to this long for the worker threads the "
                             "contender left spinning to go idle (default 50; 0 = never wait)")
    parser.add_argument("--rotate-mib", type=float, default=64.0, metavar="MIB",
                        help="rotate input slots totalling at least this many MiB (default 64, "
                             "twice this machine's L3)")
    parser.add_argument("--no-check", action="store_true", help="skip the accuracy check against the oracle")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs and round orders")
    parser.add_argument("--out", default=default_out, metavar="DIR",
                        help=f"directory for the .md/.json/.png results (default {default_out})")
    parser.add_argument("--plot", action="store_true", help="also write a PNG chart (needs matplotlib)")
    parser.set_defaults(default_shapes=default_shapes, quick_shapes=quick_shapes)


def settings_from_args(args):
    quick = args.quick
    sample_ms = args.sample_ms if args.sample_ms is not None else (2.0 if quick else 5.0)
    for name, value in (("--threads", min(args.threads)), ("--sample-ms", sample_ms),
                        ("--rotate-mib", args.rotate_mib)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if args.budget is not None and args.budget < 0:
        raise ValueError(f"--budget must be >= 0, got {args.budget}")
    if args.quiet_ms < 0:
        raise ValueError(f"--quiet-ms must be >= 0, got {args.quiet_ms}")
    return Settings(
        warmup_rounds=args.warmup if args.warmup is not None else (1 if quick else 3),
        min_rounds=max(1, args.min_rounds if args.min_rounds is not None else (3 if quick else 15)),
        budget=args.budget if args.budget is not None else (0.2 if quick else 2.0),
        sample_time=sample_ms * 1e-3,
        quiet_limit=args.quiet_ms * 1e-3,
        rotate_bytes=int(args.rotate_mib * (1 << 20)),
        offset=args.offset,
        seed=args.seed,
        check=not args.no_check,
    )


def select_contenders(contenders, only, skip):
    names = [c.name for c in contenders]
    chosen = list(contenders)
    for option, value in (("--only", only), ("--skip", skip)):
        if not value:
            continue
        wanted = [n.strip() for n in value.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise ValueError(f"{option}: unknown contender(s) {unknown}; available: {', '.join(names)}")
        chosen = [c for c in chosen if (c.name in wanted) == (option == "--only")]
    if not chosen:
        raise ValueError("no contender left to run")
    return chosen


def run_command(args, *, suite, contenders, report, plot, log=None):
    """Shared driver of the bench suites: parse, measure, write, print."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    shapes = args.shapes or (args.quick_shapes if args.quick else args.default_shapes)
    cases = parse_cases(shapes)
    chosen = select_contenders(contenders, args.only, args.skip)
    settings = settings_from_args(args)
    threads = sorted(set(args.threads))
    log(f"gncpu bench {suite}: {len(cases)} shape(s) x threads {threads} x {len(chosen)} contender(s)")
    load_at_start = load_average()
    runs = run_suite(cases, chosen, threads, settings, log=log)
    data = {
        "suite": suite,
        "command": getattr(args, "command_line", None) or "python -m gncpu " + " ".join(sys.argv[1:]),
        "settings": asdict(settings),
        "load_average_start": load_at_start,
        "contenders": [{"name": c.name, "label": c.label, "computes": c.computes, "note": c.note}
                       for c in chosen],
        "runs": runs,
        "environment": environment(),
    }
    base = os.path.join(args.out, suite)
    text = report(data)
    write_json(base + ".json", data)
    with open(base + ".md", "w") as f:
        f.write(text)
    written = [base + ".md", base + ".json"]
    if args.plot:
        plot(data, base + ".png")
        written.append(base + ".png")
    print(text)
    log("wrote " + ", ".join(written))
    return 0


def _run_group_norm(args):
    try:
        return run_command(args, suite="group_norm", contenders=CONTENDERS,
                           report=group_norm_report, plot=group_norm_plot)
    except (ValueError, RuntimeError) as exc:
        print(f"gncpu bench: error: {exc}", file=sys.stderr)
        return 2


def add_bench_command(subparsers):
    """Register `bench` on the `python -m gncpu` subcommand parser."""
    parser = subparsers.add_parser(
        "bench", help="time group_norm against the copy floor and the peers",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(parser, DEFAULT_SHAPES, QUICK_SHAPES, [c.name for c in CONTENDERS])
    parser.set_defaults(fn=_run_group_norm)
    return parser


def main(argv=None, default_out="bench-results"):
    """Entry point of bench/bench_group_norm.py (same options as `python -m gncpu bench`)."""
    parser = argparse.ArgumentParser(prog="bench_group_norm.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(parser, DEFAULT_SHAPES, QUICK_SHAPES, [c.name for c in CONTENDERS], default_out)
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["python", sys.argv[0]] + (sys.argv[1:] if argv is None else list(argv)))
    return _run_group_norm(args)
