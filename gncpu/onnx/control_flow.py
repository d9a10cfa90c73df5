"""If and Loop: ops whose attributes are subgraphs reading the enclosing scope.

They cannot run through the per-node onnx.reference fallback (it does not see
the outer scope), so they run their bodies as nested plans over a view of the
caller's values.
"""
from typing import Dict, Set

import numpy as np

from .errors import NodeExecutionError
from .graph import Node


def control_flow_kernel(node: Node, opsets: Dict[str, int], outer: Set[str]):
    from .plan import Kernel, Plan

    if node.op_type == "If":
        then_plan = Plan(node.attrs["then_branch"], outer)
        else_plan = Plan(node.attrs["else_branch"], outer)

        def run_if(args, env):
            cond = args[0]
            if cond is None or np.size(cond) != 1:
                raise ValueError(f"If condition must hold exactly one value, got shape {np.shape(cond)}")
            plan = then_plan if bool(np.asarray(cond).reshape(-1)[0]) else else_plan
            scope = plan.execute({**env, **plan.graph.initializers})
            return tuple(scope[name] for name in plan.output_names)

        return Kernel("control", run_if, "If")

    body = node.attrs["body"]
    body_plan = Plan(body, outer)
    body_inputs = [v.name for v in body.inputs]
    n_carried = len(node.inputs) - 2

    def run_loop(args, env):
        trip_count, cond, carried = args[0], args[1], list(args[2:])
        max_trips = None if trip_count is None else int(np.asarray(trip_count).reshape(-1)[0])
        keep_going = True if cond is None else bool(np.asarray(cond).reshape(-1)[0])
        scans = []
        iteration = 0
        while keep_going and (max_trips is None or iteration < max_trips):
            scope = {**env, **body.initializers}
            scope[body_inputs[0]] = np.array(iteration, dtype=np.int64)
            scope[body_inputs[1]] = np.array(keep_going, dtype=bool)
            for name, value in zip(body_inputs[2:], carried):
                scope[name] = value
            scope = body_plan.execute(scope)
            outputs = [scope[name] for name in body_plan.output_names]
            keep_going = bool(np.asarray(outputs[0]).reshape(-1)[0])
            carried = outputs[1:1 + n_carried]
            scan_values = outputs[1 + n_carried:]
            if not scans:
                scans = [[] for _ in scan_values]
            for bucket, value in zip(scans, scan_values):
                bucket.append(np.asarray(value))
            iteration += 1
        n_scans = len(body_plan.output_names) - 1 - n_carried
        if not scans:
            scans = [[] for _ in range(n_scans)]
        stacked = []
        for bucket in scans:
            stacked.append(np.stack(bucket) if bucket else np.empty((0,), dtype=np.float32))
        if len(carried) != n_carried:
            raise NodeExecutionError(f"{node.describe()}: body returned {len(carried)} loop-carried values, "
                                     f"expected {n_carried}")
        return tuple(carried) + tuple(stacked)

    return Kernel("control", run_loop, "Loop")
