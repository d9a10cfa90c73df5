#!/usr/bin/env python
"""Time gncpu.group_norm against the copy floor, NumPy, torch, onnxruntime and
OpenVINO: the same program as `python -m gncpu bench` (see bench/README.md).

    python bench/bench_group_norm.py --quick
    python bench/bench_group_norm.py --threads 1 2 --plot     # writes bench/results/
"""
import os
import sys

from gncpu.bench import main

if __name__ == "__main__":
    sys.exit(main(default_out=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")))
