"""Output of `python -m gncpu bench`: the environment record, markdown
tables, JSON and the optional PNG chart. Works on the plain-dict results
(what the JSON holds), so a saved run can be re-rendered."""
import datetime
import importlib
import json
import math
import os
import platform

__all__ = ["environment", "load_average", "markdown_table", "fmt_time", "fmt_ratio", "fmt_error", "geomean",
           "write_json", "plot_ratios", "BLAS_VARIABLES"]

# Set on this project's machine for older OpenBLAS builds; they slow NumPy's
# float32 matmul, so benchmark runs should unset them (design notes, BLAS).
BLAS_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "OMP_PROC_BIND", "GOMP_SPINCOUNT",
                     "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GNCPU_KERNEL")


def _version(module):
    try:
        return getattr(importlib.import_module(module), "__version__", "unknown")
    except Exception:  # not installed, or broken: the record says so
        return None


def cpu_model():
    """The CPU's model name, for reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _threadpools():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    return [{k: v for k, v in pool.items() if k in
             ("user_api", "internal_api", "prefix", "version", "num_threads", "architecture", "filepath")}
            for pool in threadpool_info()]


def load_average():
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


# The x86 vector extensions that decide which kernel variant runs.
_ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16")


def _isa_flags():
    """The CPU's vector extensions from /proc/cpuinfo (Linux), or None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return " ".join(flag for flag in _ISA_FLAGS if flag in have)
    except OSError:
        pass
    return None


def environment(peers=("numpy", "torch", "onnxruntime", "openvino", "onnx")):
    """What ran where: versions, gncpu's build, thread pools (call after the
    peers are imported so their pools show), variables and machine load."""
    from .._config import config

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "isa": _isa_flags(),
        "cpu_count": os.cpu_count(),
        "load_average": load_average(),
        "python": platform.python_version(),
        "gncpu": config(),
        "versions": {name: _version(name) for name in peers},
        "variables": {name: os.environ.get(name) for name in BLAS_VARIABLES + _THREAD_VARIABLES},
        "threadpools": _threadpools(),
    }
    return env


def fmt_time(seconds):
    """Microseconds with 3-4 significant digits."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    us = seconds * 1e6
    if us < 10:
        return f"{us:.2f}"
    if us < 1000:
        return f"{us:.1f}"
    return f"{us:,.0f}"


def fmt_ratio(value):
    if value is None or not math.isfinite(value):
        return "—"
    if value < 0.1:
        return f"{value:.2g}"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def fmt_error(max_error, nonfinite=0):
    if max_error is None:
        return "—"
    text = "nan" if not math.isfinite(max_error) else f"{max_error:.1e}"
    if nonfinite:
        text += f" ({nonfinite:,} non-finite)"
    return text


def geomean(values):
    values = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


def markdown_table(header, rows, align=None):
    """A GitHub markdown table; `align` per column: 'l' or 'r' (default: first left, rest right)."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(map(str, header)) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path, data):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=1, default=str)
        f.write("\n")


def plot_ratios(path, title, panels):
    """Grouped bar chart, one panel per entry of `panels`:
    [(panel_title, case_labels, {series_label: [ratio or None per case]})],
    log scale, a line at 1.0 (the copy floor). Needs matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from None
    fig, axes = plt.subplots(len(panels), 1, figsize=(13, 4.2 * len(panels)), squeeze=False)
    for ax, (panel_title, cases, series) in zip(axes[:, 0], panels):
        width = 0.8 / max(1, len(series))
        for k, (label, values) in enumerate(series.items()):
            xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(cases))]
            ys = [v if v is not None and math.isfinite(v) else 0 for v in values]
            ax.bar(xs, ys, width, label=label)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(cases, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("time / copy floor")
        ax.set_title(panel_title)
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8, ncol=min(4, len(series)))
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- tables over a run's results ---------------------------------------------------

class Lookup:
    """A run's results (the JSON dict) indexed by (case label, threads)."""

    def __init__(self, data):
        self.data = data
        self.by_key = {(r["case"], r["threads"]): r for r in data["runs"]}
        self.cases = list(dict.fromkeys(r["case"] for r in data["runs"]))
        self.threads = sorted({r["threads"] for r in data["runs"]})
        self.contenders = data["contenders"]
        self._labels = {c["name"]: c["label"] for c in self.contenders}

    def names(self, exclude=(), only=None):
        """Contender names in run order (those in `only`, minus `exclude`)."""
        return [c["name"] for c in self.contenders
                if c["name"] not in exclude and (only is None or c["name"] in only)]

    def label(self, name):
        return self._labels[name]

    def entry(self, case, threads, name):
        run = self.by_key.get((case, threads))
        return None if run is None else run["results"].get(name)

    def median(self, case, threads, name):
        """Median seconds per call, or None if not measured."""
        entry = self.entry(case, threads, name)
        return entry["median_us"] * 1e-6 if entry and entry.get("status") == "ok" else None

    def ratio(self, case, threads, numerator, denominator):
        a, b = self.median(case, threads, numerator), self.median(case, threads, denominator)
        return a / b if a and b else None

    def mib(self, case):
        return next(r["mib"] for r in self.data["runs"] if r["case"] == case)

    def main_threads(self):
        """The thread count targets are stated at: 2 if measured, else the most."""
        return 2 if 2 in self.threads else self.threads[-1]


def _time_cell(entry):
    if entry is None:
        return "—"
    if entry.get("status") != "ok":
        return entry.get("status", "—")
    return f"{fmt_time(entry['median_us'] * 1e-6)} ±{50 * entry['spread']:.0f}%"


def times_table(lookup, threads, names):
    """Median µs per call ± half the IQR (as % of the median)."""
    rows = [[case, f"{lookup.mib(case):.2f}"] + [_time_cell(lookup.entry(case, threads, n)) for n in names]
            for case in lookup.cases]
    return markdown_table(["shape N×C×H×W/G", "MiB"] + [lookup.label(n) for n in names], rows)


def ratio_table(lookup, threads, columns, geomean_row=True):
    """columns: [(heading, numerator name, denominator name)]; one row per
    case, plus the geometric mean over cases."""
    rows = [[case] + [fmt_ratio(lookup.ratio(case, threads, a, b)) for _, a, b in columns]
            for case in lookup.cases]
    if geomean_row:
        rows.append(["**geomean**"] + [fmt_ratio(geomean([lookup.ratio(c, threads, a, b) for c in lookup.cases]))
                                       for _, a, b in columns])
    return markdown_table(["shape"] + [heading for heading, _, _ in columns], rows)


def floor_table(lookup, threads, names):
    return ratio_table(lookup, threads, [(lookup.label(n), n, "floor") for n in names])


def scaling_table(lookup, few, many, names):
    """Time at `few` threads / time at `many` threads, per contender."""
    rows = []
    for case in lookup.cases:
        cells = []
        for n in names:
            a, b = lookup.median(case, few, n), lookup.median(case, many, n)
            cells.append(fmt_ratio(a / b) if a and b else "—")
        rows.append([case, f"{lookup.mib(case):.2f}"] + cells)
    return markdown_table(["shape", "MiB"] + [lookup.label(n) for n in names], rows)


def accuracy_table(lookup, names):
    """Worst max |error| over thread counts, and non-finite output counts."""
    rows = []
    for case in lookup.cases:
        cells = []
        for n in names:
            errors, bad = [], 0
            for t in lookup.threads:
                entry = lookup.entry(case, t, n)
                if entry and entry.get("status") == "ok" and entry.get("max_abs_error") is not None:
                    errors.append(entry["max_abs_error"])
                    bad = max(bad, entry.get("nonfinite", 0))
            if not errors:
                cells.append("—")
            else:
                worst = math.nan if any(not math.isfinite(e) for e in errors) else max(errors)
                cells.append(fmt_error(worst, bad))
        rows.append([case] + cells)
    return markdown_table(["shape"] + [lookup.label(n) for n in names], rows)


def has_accuracy(lookup):
    return any(entry.get("max_abs_error") is not None or entry.get("nonfinite")
               for run in lookup.data["runs"] for entry in run["results"].values())


def not_run_lines(lookup):
    """One line per contender that was skipped or failed, with the reason."""
    seen = {}
    for run in lookup.data["runs"]:
        for name, entry in run["results"].items():
            if entry.get("status") in ("skipped", "failed"):
                seen.setdefault((name, entry["status"], entry["reason"]), []).append(
                    f"{run['case']}@{run['threads']}t")
    lines = []
    for (name, status, reason), where in seen.items():
        scope = "everywhere" if len(where) == len(lookup.data["runs"]) else ", ".join(where)
        lines.append(f"- **{lookup.label(name)}** {status} ({scope}): {reason}")
    return lines


def contender_lines(lookup):
    return [f"- **{c['label']}**: {c['note']}" for c in lookup.contenders if c.get("note")]


def _load(values):
    return f"{values[0]:.2f}" if values else "?"


def report_header(data, title):
    env, settings = data["environment"], data["settings"]
    gn = env["gncpu"]
    lines = [
        f"# {title}",
        "",
        f"{env['date']} · {env['cpu']} ({env['cpu_count']} CPUs, 1-minute load average "
        f"{_load(data.get('load_average_start'))} at start, {_load(env['load_average'])} at end) · "
        f"gncpu {gn['version']} "
        f"kernel `{gn['kernel_variant']}` (CPU supports up to `{gn.get('cpu_supports', '?')}`; "
        f"ISA: {env.get('isa') or '?'}) · "
        + " · ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
        "",
        f"Command: `{data['command']}`",
        "",
        f"float32, x = {settings['offset']:g} + N(0,1); median per call over interleaved rounds "
        f"(every contender once per round, shuffled order, each waiting for the previous one's worker "
        f"threads to stop spinning); ± is half the interquartile range as % of the median; inputs rotate "
        f"over slots totalling ≥ {settings['rotate_bytes'] >> 20} MiB.",
    ]
    loads = [r["foreign_load"] for r in data["runs"] if r.get("foreign_load") is not None]
    if loads:
        worst = max(loads)
        lines += ["", f"Other processes used {100 * sum(loads) / len(loads):.0f}% of the machine's CPU time "
                      f"while this ran (worst shape {100 * worst:.0f}%)."
                  + (" **The machine was shared: multi-thread times are unreliable; rerun on a quiet machine.**"
                     if worst > 0.1 else "")]
    blas = {k: v for k, v in env["variables"].items() if k in BLAS_VARIABLES and v}
    if blas:
        lines += ["", f"**Warning:** {', '.join(f'{k}={v}' for k, v in blas.items())} set: unset them "
                      f"for benchmark runs (see bench/README.md)."]
    return lines


