"""Models and feeds shared by the service tests (fork, pickling, soak, Ray) and
by the scripts they run in subprocesses.

`conv_gn_silu_model` is big enough for a 2-thread run to really open an OpenMP
parallel region (its GroupNorm sees 2 x 32 x 64 x 64 elements, over twice
gncpu's per-thread minimum) and to split its convolution over the session's
own threads; small enough that a run takes milliseconds.
"""
import os

import numpy as np

MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
# The committed SD-VAE-decoder export (diffusers' decoder, shrunk): 17 Convs, 14 GroupNorms,
# attention MatMuls and Softmax, as issue 11's concurrency report used.
VAE_DECODER = os.path.join(MODELS, "torch_legacy_hf_sd_vae_decoder_opset17.onnx")
BIG_SHAPE = (2, 32, 64, 64)


def conv_gn_silu_model(shape=BIG_SHAPE, groups=8, seed=0):
    """Conv 3x3 -> GroupNormalization (opset 21) -> SiLU as serialized bytes."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    channels = shape[1]
    w = (rng.standard_normal((channels, channels, 3, 3)) / np.sqrt(9 * channels)).astype(np.float32)
    scale = rng.standard_normal(channels).astype(np.float32)
    bias = rng.standard_normal(channels).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("GroupNormalization", ["c", "scale", "bias"], ["n"], num_groups=groups),
             helper.make_node("Sigmoid", ["n"], ["s"]),
             helper.make_node("Mul", ["n", "s"], ["y"])]
    graph = helper.make_graph(
        nodes, "conv_gn_silu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(scale, "scale"),
         numpy_helper.from_array(bias, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model.SerializeToString()


def feeds_for(session, seed=1):
    """Random float32 feeds for every input of `session` (static shapes)."""
    rng = np.random.default_rng(seed)
    return {arg.name: rng.standard_normal(arg.shape).astype(np.float32) for arg in session.get_inputs()}



# Module-level, so that a spawn-context pool's workers find them by name: the
# pickled object arrives as an argument and is rebuilt in the worker.
def run_session(session, feeds):
    return session.run(None, feeds)[0]


def call_module(module, x):
    return module(x)


class SessionPredictor:
    """A Ray Data actor as docs/scaling.md describes it: one session, built in
    __init__ (so it is built where it runs), num_threads matched to its CPUs.
    Also reports what the actor's process saw of its thread settings."""

    def __init__(self, model_path, num_threads):
        import gncpu
        from gncpu.onnx import InferenceSession

        self.session = InferenceSession(model_path, num_threads=num_threads)
        self.input_name = self.session.get_inputs()[0].name
        self.seen = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} gncpu={gncpu.get_num_threads()}"
        self.gncpu_file = gncpu.__file__

    def __call__(self, batch):
        # The model's batch dimension is fixed at 1: one run per row.
        outputs = [self.session.run(None, {self.input_name: row[None]})[0][0] for row in batch["x"]]
        rows = len(outputs)
        return {"index": batch["index"], "y": np.stack(outputs),
                "seen": np.array([self.seen] * rows), "gncpu_file": np.array([self.gncpu_file] * rows)}
