"""Output of `python -m gncpu bench`: the environment record, markdown
tables, JSON and the optional PNG chart. Works on the plain-dict results
(what the JSON holds), so a saved run can be re-rendered."""
import datetime
import importlib
import json
import math
import os
import platform

__all__ = ["environment", "markdown_table", "fmt_time", "fmt_ratio", "fmt_error", "geomean",
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


def _cpu_model():
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


def environment(peers=("numpy", "torch", "onnxruntime", "openvino", "onnx")):
    """What ran where: versions, gncpu's build, thread pools (call after the
    peers are imported so their pools show), variables and machine load."""
    from ._config import config

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
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
        raise RuntimeError("--plot needs matplotlib: pip install 'gncpu[plot]'") from None
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
