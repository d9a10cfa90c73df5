"""The benchmark behind `gncpu bench` (= `python -m gncpu bench`) and bench/*.py.

One module per job:
  timing.py      interleaved rounds over rotating input slots, foreign-load detection
  contenders.py  the cases, their input buffers and what is timed (gncpu, the copy
                 floor, NumPy, and torch, onnxruntime, OpenVINO when installed)
  report.py      the environment record, markdown tables, JSON and the chart
  cli.py         the suite runner, the group-norm report and its targets, the command

This module gathers what the command, other suites (bench/bench_epilogues.py) and the
tests use. Importing it imports none of the optional peers.
"""
from .cli import (BIG_GROUP_SHAPE, DEFAULT_SHAPES, ONE_GROUP_SHAPE, QUICK_SHAPES, SD_SHAPES, Settings,
                  add_bench_command, add_common_options, floor_plot, group_norm_plot, group_norm_report, main,
                  parse_cases, run_command, run_suite)
from .contenders import (CONTENDERS, Case, Contender, Skipped, Workload, import_optional, set_torch_threads,
                         touched_empty)
from .report import (Lookup, accuracy_table, contender_lines, environment, has_accuracy, not_run_lines, ratio_table,
                     report_header, times_table)

__all__ = [
    # the command
    "add_bench_command", "main", "run_command", "add_common_options",
    # the engine, for other suites (bench/bench_epilogues.py)
    "run_suite", "Settings", "Case", "Workload", "Contender", "Skipped", "CONTENDERS", "import_optional",
    "set_torch_threads", "touched_empty", "parse_cases", "DEFAULT_SHAPES", "QUICK_SHAPES",
    "SD_SHAPES", "ONE_GROUP_SHAPE", "BIG_GROUP_SHAPE",
    # reports
    "group_norm_report", "group_norm_plot", "floor_plot", "environment", "Lookup", "times_table",
    "ratio_table", "accuracy_table", "has_accuracy", "not_run_lines", "contender_lines", "report_header",
]
