#!/usr/bin/env python
"""Benchmark gncpu's fused epilogues and layouts, interleaved in one run:

  SiLU: GN+SiLU fused (`activation="silu"`) vs GN alone vs unfused (gncpu GN,
        then SiLU in NumPy) vs torch `F.silu(F.group_norm(x))`.
  Layouts: NHWC (`channels_last=True` on an (N, H, W, C) array), an NCHW-shaped
        array with channels-last strides, vs NCHW; vs torch on channels_last
        tensors.

    python bench/bench_epilogues.py --quick
    python bench/bench_epilogues.py --threads 1 2 --plot

Same options as `python -m gncpu bench`; writes bench/results/epilogues.md/.json/.png
(or under --out DIR).
Contenders needing an argument this gncpu build lacks are reported as
"not available in this build", not as errors.
"""
import argparse
import inspect
import os
import shlex
import sys

import numpy as np

from gncpu.bench import (CONTENDERS, Contender, Lookup, Skipped, accuracy_table, add_common_options,
                         contender_lines, floor_plot, has_accuracy, import_optional, not_run_lines,
                         ratio_table, report_header, run_command, set_torch_threads, times_table,
                         touched_empty)

SHAPES = ("1x320x64x64/32", "1x640x32x32/32", "1x1280x16x16/32", "1x512x64x64/32",
          "1x128x512x512/32", "8x256x56x56/32", "1x32x64x64/1")
QUICK_SHAPES = ("1x320x64x64/32", "1x512x64x64/32", "1x32x64x64/1")


def _gncpu_with(*arguments):
    """gncpu.group_norm, if this build has the keyword `arguments`."""
    import gncpu

    accepted = inspect.signature(gncpu.group_norm).parameters
    missing = [a for a in arguments if a not in accepted]
    if missing:
        raise Skipped("not available in this build: gncpu.group_norm has no "
                      + " or ".join(f"{a}=" for a in missing) + " argument")
    return gncpu.group_norm


def _nhwc_inputs(work):
    return [np.ascontiguousarray(np.moveaxis(x, 1, -1)) for x in work.inputs]


def _nhwc_output(work):
    return touched_empty(np.moveaxis(work.output, 1, -1).shape)


def _as_nchw(a):
    """An (N, *spatial, C) array viewed as (N, C, *spatial) for the accuracy check."""
    return np.moveaxis(a, -1, 1)


# --- SiLU epilogue -------------------------------------------------------------------

def numpy_silu_(y, scratch):
    """y *= sigmoid(y) in place; sigmoid as 0.5 + 0.5 tanh(y/2), which cannot overflow."""
    np.multiply(y, np.float32(0.5), out=scratch)
    np.tanh(scratch, out=scratch)
    scratch *= np.float32(0.5)
    scratch += np.float32(0.5)
    y *= scratch
    return y


def _prepare_gncpu_silu(work, threads):
    group_norm = _gncpu_with("activation")
    inputs, output = work.inputs, work.output
    g, w, b, eps = work.case.groups, work.weight, work.bias, work.eps

    def run(slot):
        return group_norm(inputs[slot], g, w, b, eps, activation="silu", out=output, num_threads=threads)
    return run


def _prepare_gncpu_numpy_silu(work, threads):
    import gncpu

    inputs, output = work.inputs, work.output
    g, w, b, eps = work.case.groups, work.weight, work.bias, work.eps
    scratch = touched_empty(work.case.shape)
    group_norm = gncpu.group_norm

    def run(slot):
        y = group_norm(inputs[slot], g, w, b, eps, out=output, num_threads=threads)
        return numpy_silu_(y, scratch)
    return run


def _torch_setup(work, threads, channels_last):
    torch = import_optional("torch")
    set_torch_threads(torch, threads)
    if channels_last:
        # NCHW-shaped tensors over NHWC memory: torch's channels_last format
        tensors = [torch.from_numpy(a).permute(0, 3, 1, 2) for a in work.derived("nhwc_in", _nhwc_inputs)]
        if not tensors[0].is_contiguous(memory_format=torch.channels_last):
            raise Skipped("torch did not see the permuted tensor as channels_last")
    else:
        tensors = [torch.from_numpy(x) for x in work.inputs]
    return torch, tensors, torch.from_numpy(work.weight), torch.from_numpy(work.bias)


def _torch_runner(channels_last, silu):
    def prepare(work, threads):
        torch, tensors, weight, bias = _torch_setup(work, threads, channels_last)
        g, eps = work.case.groups, work.eps
        group_norm, silu_fn = torch.nn.functional.group_norm, torch.nn.functional.silu
        if silu:
            def run(slot):
                return silu_fn(group_norm(tensors[slot], g, weight, bias, eps))
        else:
            def run(slot):
                return group_norm(tensors[slot], g, weight, bias, eps)
        return run
    return prepare


# --- layouts ---------------------------------------------------------------------------

def _gncpu_nhwc_runner(activation):
    def prepare(work, threads):
        group_norm = _gncpu_with("channels_last", *(["activation"] if activation else []))
        inputs = work.derived("nhwc_in", _nhwc_inputs)
        output = work.derived("nhwc_out", _nhwc_output)
        g, w, b, eps = work.case.groups, work.weight, work.bias, work.eps
        kwargs = {"activation": activation} if activation else {}

        def run(slot):
            return _as_nchw(group_norm(inputs[slot], g, w, b, eps, channels_last=True, out=output,
                                       num_threads=threads, **kwargs))
        return run
    return prepare


def _prepare_gncpu_strided(work, threads):
    """NCHW shape, channels-last strides (a torch channels_last tensor seen
    through DLPack). Writes into a channels-last view too if the build
    accepts that as out=, else lets gncpu allocate (noted in the results)."""
    import gncpu

    views = [_as_nchw(a) for a in work.derived("nhwc_in", _nhwc_inputs)]
    out_view = _as_nchw(work.derived("nhwc_out", _nhwc_output))
    g, w, b, eps = work.case.groups, work.weight, work.bias, work.eps
    group_norm = gncpu.group_norm
    try:
        group_norm(views[0], g, w, b, eps, out=out_view, num_threads=threads)
    except (ValueError, TypeError):
        def run(slot):
            return group_norm(views[slot], g, w, b, eps, num_threads=threads)
        run.detail = "out= with channels-last strides not accepted by this build: gncpu allocates"
        return run

    def run(slot):
        return group_norm(views[slot], g, w, b, eps, out=out_view, num_threads=threads)
    run.detail = "out= a channels-last view"
    return run


_BASE = {c.name: c for c in CONTENDERS}
EPILOGUE_CONTENDERS = [
    _BASE["floor"],
    Contender("gncpu", "gncpu GN", _BASE["gncpu"].prepare, note="gncpu.group_norm, NCHW, no activation"),
    Contender("gncpu-silu", "gncpu GN+SiLU", _prepare_gncpu_silu, computes="group_norm+silu",
              note='gncpu.group_norm(..., activation="silu"): SiLU fused into the apply loop'),
    Contender("gncpu+numpy-silu", "gncpu GN, NumPy SiLU", _prepare_gncpu_numpy_silu, computes="group_norm+silu",
              note="gncpu.group_norm, then SiLU in place with NumPy (five more passes)"),
    Contender("torch", "torch GN", _torch_runner(False, False), note="F.group_norm, contiguous NCHW"),
    Contender("torch-silu", "torch GN→SiLU", _torch_runner(False, True), computes="group_norm+silu",
              note="F.silu(F.group_norm(x)), contiguous NCHW"),
    Contender("gncpu-nhwc", "gncpu NHWC", _gncpu_nhwc_runner(None),
              note="gncpu.group_norm(x_nhwc, channels_last=True) on an (N, H, W, C) array"),
    Contender("gncpu-strided", "gncpu NCHW CL-strides", _prepare_gncpu_strided,
              note="gncpu.group_norm on an NCHW-shaped array with channels-last strides"),
    Contender("gncpu-nhwc-silu", "gncpu NHWC+SiLU", _gncpu_nhwc_runner("silu"), computes="group_norm+silu",
              note='gncpu.group_norm(x_nhwc, channels_last=True, activation="silu")'),
    Contender("torch-cl", "torch CL", _torch_runner(True, False),
              note="F.group_norm on a channels_last tensor"),
    Contender("torch-cl-silu", "torch CL GN→SiLU", _torch_runner(True, True), computes="group_norm+silu",
              note="F.silu(F.group_norm(x)) on a channels_last tensor"),
]

SILU_SECTION = ("floor", "gncpu", "gncpu-silu", "gncpu+numpy-silu", "torch", "torch-silu")
SILU_RATIOS = [
    ("fused / GN alone", "gncpu-silu", "gncpu"),
    ("fused / floor", "gncpu-silu", "floor"),
    ("unfused / fused", "gncpu+numpy-silu", "gncpu-silu"),
    ("torch GN→SiLU / fused", "torch-silu", "gncpu-silu"),
    ("torch GN→SiLU / torch GN", "torch-silu", "torch"),
]
LAYOUT_SECTION = ("floor", "gncpu", "gncpu-nhwc", "gncpu-strided", "gncpu-nhwc-silu", "torch", "torch-cl",
                  "torch-cl-silu")
LAYOUT_RATIOS = [
    ("gncpu NHWC / NCHW", "gncpu-nhwc", "gncpu"),
    ("gncpu CL-strides / NCHW", "gncpu-strided", "gncpu"),
    ("gncpu NHWC / floor", "gncpu-nhwc", "floor"),
    ("torch CL / torch NCHW", "torch-cl", "torch"),
    ("torch CL / gncpu NHWC", "torch-cl", "gncpu-nhwc"),
    ("torch CL GN→SiLU / gncpu NHWC+SiLU", "torch-cl-silu", "gncpu-nhwc-silu"),
]


def epilogue_report(data):
    lookup = Lookup(data)
    lines = report_header(data, "gncpu epilogue and layout benchmark")
    not_run = not_run_lines(lookup)
    if not_run:
        lines += ["", "Not measured:", ""] + not_run
    details = sorted({(name, entry["detail"]) for run in data["runs"] for name, entry in run["results"].items()
                      if entry.get("detail")})
    if details:
        lines += ["", "Notes:", ""] + [f"- **{lookup.label(n)}**: {d}" for n, d in details]
    present = set(lookup.names())
    for title, section, ratios in (("SiLU epilogue (NCHW)", SILU_SECTION, SILU_RATIOS),
                                   ("Layouts", LAYOUT_SECTION, LAYOUT_RATIOS)):
        names = [n for n in section if n in present]
        columns = [c for c in ratios if c[1] in present and c[2] in present]
        for t in sorted(lookup.threads, reverse=True):
            lines += ["", f"## {title}, {t} thread{'s' if t > 1 else ''}", "",
                      "Median time per call (µs):", "", times_table(lookup, t, names)]
            if columns:
                lines += ["", "Ratios of median times (above 1: the numerator is slower):", "",
                          ratio_table(lookup, t, columns)]
    if has_accuracy(lookup):
        lines += ["", "## Accuracy: max |y − float64 oracle| (worst over thread counts)", "",
                  accuracy_table(lookup, [c["name"] for c in lookup.contenders if c.get("computes")])]
    lines += ["", "Contenders:", ""] + contender_lines(lookup)
    return "\n".join(lines) + "\n"


def epilogue_plot(data, path):
    floor_plot(data, path, "GroupNorm epilogues and layouts: time / copy floor (lower is better)")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="bench_epilogues.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(parser, SHAPES, QUICK_SHAPES, [c.name for c in EPILOGUE_CONTENDERS],
                       default_out=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["python", sys.argv[0]] + (sys.argv[1:] if argv is None else list(argv)))
    try:
        return run_command(args, suite="epilogues", contenders=EPILOGUE_CONTENDERS,
                           report=epilogue_report, plot=epilogue_plot)
    except (ValueError, RuntimeError) as exc:
        print(f"bench_epilogues.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
