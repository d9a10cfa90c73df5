"""gncpu as an `onnx.backend`, so onnx.backend.test.BackendTest can drive it.

    import onnx.backend.test
    from gncpu.onnx import backend
    suite = onnx.backend.test.BackendTest(backend.GncpuBackend, __name__)

`prepare` does not run onnx.checker: it rejects opset-18 GroupNormalization
(deprecated there, yet what exporters emit), and the session does its own
structural validation.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from .session import InferenceSession


class GncpuRep(BackendRep):
    def __init__(self, session: InferenceSession):
        super().__init__()
        self.session = session
        self._input_names = [a.name for a in session.get_inputs()]

    def run(self, inputs: Any, **kwargs: Any):
        if isinstance(inputs, dict):
            feed = dict(inputs)
        else:
            if isinstance(inputs, np.ndarray):
                inputs = [inputs]
            if len(inputs) != len(self._input_names):
                raise ValueError(f"the model takes {len(self._input_names)} inputs {self._input_names}, "
                                 f"got {len(inputs)}")
            feed = dict(zip(self._input_names, inputs))
        return tuple(self.session.run(None, feed))


class GncpuBackend(Backend):
    # Set to False (e.g. by conformance tests) to fail instead of running ops through onnx.reference.
    allow_fallback = True
    # The backend tests gncpu's own ops, so it runs the embedded engine (engine="onnxruntime"
    # would hand every node but GroupNorm to onnxruntime).
    engine = "gncpu"

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return device.upper().startswith("CPU")

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper().startswith("CPU")

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> GncpuRep:
        if not cls.supports_device(device):
            raise ValueError(f"gncpu runs on CPU only, device={device!r} requested")
        session = InferenceSession(model, allow_fallback=cls.allow_fallback, engine=cls.engine)
        return GncpuRep(session)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Sequence[np.ndarray], device: str = "CPU",
                 outputs_info=None, **kwargs: Any):
        """Run one node on `inputs` (positional, in the node's input order)."""
        opset = kwargs.get("opset_version", onnx.defs.onnx_opset_version())
        present = [name for name in node.input if name]
        if len(present) != len(inputs):
            raise ValueError(f"node {node.op_type} has {len(present)} inputs {present}, got {len(inputs)} arrays")
        graph_inputs = [onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype),
                                                           np.shape(v)) for name, v in zip(present, inputs)]
        graph_outputs = [onnx.helper.make_empty_tensor_value_info(name) for name in node.output if name]
        graph = onnx.helper.make_graph([node], f"run_node_{node.op_type}", graph_inputs, graph_outputs)
        opsets = [onnx.helper.make_opsetid("", opset)]
        if node.domain not in ("", "ai.onnx"):
            opsets.append(onnx.helper.make_opsetid(node.domain, 1))
        model = onnx.helper.make_model(graph, opset_imports=opsets)
        return cls.prepare(model, device).run([np.asarray(v) for v in inputs])


prepare = GncpuBackend.prepare
run_model = GncpuBackend.run_model
run_node = GncpuBackend.run_node
supports_device = GncpuBackend.supports_device
