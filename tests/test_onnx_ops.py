"""One-node models per native op, compared with onnx.reference.ReferenceEvaluator.

Every case runs twice: with the non-data inputs (weights, shapes, axes) as
initializers -- the session then may fold or specialize on them -- and as
graph inputs fed at run time. Sessions are built with allow_fallback=False,
so a pass proves the native implementation ran.
"""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from gncpu.onnx import InferenceSession  # noqa: E402

RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10, np.dtype(np.float16): 2e-3}
RNG = np.random.default_rng(1234)


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def i64(*values):
    return np.array(values, dtype=np.int64)


class Case:
    def __init__(self, op, inputs, attrs=None, opset=18, n_outputs=1, id=None):
        self.op, self.inputs, self.attrs, self.opset, self.n_outputs = op, inputs, attrs or {}, opset, n_outputs
        self.id = id or op


def _conv_cases():
    cases = []
    for spatial, size in ((1, (17,)), (2, (9, 11)), (3, (5, 6, 7))):
        for group, c_in, c_out in ((1, 4, 6), (2, 4, 6), (4, 4, 4), (4, 4, 8)):
            for strides, pads, dilations in ((1, 0, 1), (1, 1, 1), (2, 1, 1), (1, 2, 2), (3, 0, 1)):
                k = 3
                x = f32(2, c_in, *size)
                w = f32(c_out, c_in // group, *([k] * spatial))
                b = f32(c_out)
                attrs = dict(group=group, strides=[strides] * spatial, pads=[pads] * (2 * spatial),
                             dilations=[dilations] * spatial)
                cases.append(Case("Conv", [x, w, b], attrs, id=f"Conv{spatial}d_g{group}_{c_in}to{c_out}_s{strides}"
                                  f"p{pads}d{dilations}"))
    cases += [
        Case("Conv", [f32(1, 8, 10, 10), f32(16, 8, 1, 1)], {}, id="Conv_1x1_nobias"),
        Case("Conv", [f32(1, 3, 10, 10), f32(5, 3, 3, 3), f32(5)], {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
             id="Conv_same_upper_s2"),
        Case("Conv", [f32(1, 3, 10, 10), f32(5, 3, 2, 2), f32(5)], {"auto_pad": "SAME_LOWER"}, id="Conv_same_lower"),
        Case("Conv", [f32(1, 3, 10, 10), f32(5, 3, 3, 3)], {"auto_pad": "VALID"}, id="Conv_valid"),
        Case("Conv", [f32(1, 3, 10, 12), f32(5, 3, 3, 5), f32(5)], {"pads": [1, 2, 0, 2]}, id="Conv_asym_pads_rect"),
        Case("Conv", [f32(1, 512, 20), f32(512, 1, 5), f32(512)], {"group": 512, "pads": [2, 2]},
             id="Conv1d_depthwise_512"),
        Case("Conv", [f32(1, 16, 40), f32(32, 1, 10)], {"group": 16, "strides": [5]}, id="Conv1d_w2v_strided_grouped"),
        # Large enough that the session splits the work over threads (see ops/parallel.py).
        Case("Conv", [f32(1, 48, 40, 40), f32(48, 48, 3, 3), f32(48)], {"pads": [1, 1, 1, 1]}, id="Conv_threaded"),
        Case("Conv", [f32(1, 48, 40, 40), f32(64, 48, 3, 3), f32(64)], {"pads": [1, 1, 1, 1], "strides": [2, 2]},
             id="Conv_threaded_strided"),
        Case("Conv", [f32(2, 96, 40, 40), f32(96, 1, 5, 5), f32(96)], {"pads": [2, 2, 2, 2], "group": 96},
             id="Conv_threaded_depthwise"),
        Case("Conv", [f32(1, 96, 40, 40), f32(96, 1, 3, 3)], {"strides": [2, 2], "group": 96},
             id="Conv_threaded_depthwise_strided"),
        Case("Conv", [f32(1, 256, 48, 48), f32(128, 256, 1, 1)], {}, id="Conv_threaded_pointwise"),
        # 3x3 stride 1 with >= 128 channels runs as Winograd F(2x2, 3x3); odd sizes crop the last tile.
        Case("Conv", [f32(1, 128, 12, 12), f32(128, 128, 3, 3), f32(128)], {"pads": [1, 1, 1, 1]},
             id="Conv_winograd"),
        Case("Conv", [f32(2, 160, 9, 7), f32(256, 160, 3, 3)], {"pads": [1, 1, 1, 1]}, id="Conv_winograd_odd"),
        Case("Conv", [f32(1, 128, 11, 10), f32(128, 128, 3, 3), f32(128)], {"pads": [0, 1, 2, 0]},
             id="Conv_winograd_asym_pads"),
        Case("Conv", [f32(1, 256, 8, 8) * 100 + 1000, f32(256, 256, 3, 3), f32(256)], {"pads": [1, 1, 1, 1]},
             id="Conv_winograd_offset_input"),
    ]
    return cases


CONV_TRANSPOSE_CASES = [
    Case("ConvTranspose", [f32(1, 4, 7, 6), f32(4, 3, 3, 3), f32(3)], {"strides": [2, 2], "pads": [1, 1, 1, 1],
                                                                     "output_padding": [1, 1]}, id="ConvT_s2_outpad"),
    Case("ConvTranspose", [f32(1, 3, 5, 5), f32(3, 2, 3, 3)], {"strides": [2, 2], "auto_pad": "SAME_UPPER"},
         id="ConvT_same_upper"),
]

CASES = _conv_cases() + CONV_TRANSPOSE_CASES + [
    Case("MatMul", [f32(3, 4), f32(4, 5)]),
    Case("MatMul", [f32(2, 3, 4), f32(4, 5)], id="MatMul_batched"),
    Case("MatMul", [f32(2, 1, 3, 4), f32(5, 4, 6)], id="MatMul_broadcast"),
    Case("MatMul", [f32(4), f32(4, 3)], id="MatMul_vector"),
    Case("MatMul", [f32(2, 300, 128), f32(128, 96)], id="MatMul_threaded_rows"),
    Case("MatMul", [f32(16, 256), f32(256, 1200)], id="MatMul_threaded_columns"),
    Case("MatMul", [f32(3, 1, 200, 64), f32(4, 64, 200)], id="MatMul_threaded_batched"),
    Case("MatMul", [f32(1, 300, 128), f32(1, 128, 300)], id="MatMul_threaded_batch1"),
    Case("Gemm", [f32(3, 4), f32(4, 5), f32(5)]),
    Case("Gemm", [f32(4, 3), f32(5, 4), f32(3, 5)], {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0},
         id="Gemm_trans_alpha_beta"),
    Case("Add", [f32(2, 3, 4), f32(3, 1)]),
    Case("Sub", [f32(2, 3), f32(2, 3)]),
    Case("Mul", [f32(2, 3, 4), f32(4)]),
    Case("Div", [f32(2, 3), np.abs(f32(2, 3)) + 0.5]),
    Case("Div", [i64(7, -7, 9), i64(2, 2, -4)], id="Div_int_truncates"),
    Case("Pow", [np.abs(f32(2, 3)) + 0.1, np.array(2.0, np.float32)], id="Pow_square"),
    Case("Pow", [np.abs(f32(2, 3)) + 0.1, np.array(0.7, np.float32)], id="Pow_fraction"),
    Case("Sqrt", [np.abs(f32(3, 4))]),
    Case("Reciprocal", [np.abs(f32(3, 4)) + 0.5]),
    Case("Neg", [f32(3, 4)]),
    Case("Exp", [f32(3, 4)]),
    Case("Erf", [f32(50) * 2]),
    Case("Gelu", [f32(4, 5)], opset=20),
    Case("Gelu", [f32(4, 5)], {"approximate": "tanh"}, opset=20, id="Gelu_tanh"),
    Case("Sigmoid", [f32(4, 5) * 30]),
    Case("Relu", [f32(4, 5)]),
    Case("LeakyRelu", [f32(4, 5)], {"alpha": 0.2}),
    Case("Tanh", [f32(4, 5)]),
    Case("Cos", [f32(4, 5)]),
    Case("Sin", [f32(4, 5)]),
    Case("Equal", [i64(1, 2, 3), i64(1, 0, 3)]),
    Case("GreaterOrEqual", [f32(3, 4), f32(4)]),
    Case("And", [np.array([True, False, True]), np.array([True, True, False])]),
    Case("IsNaN", [np.array([1.0, np.nan, np.inf], np.float32)]),
    Case("Where", [np.array([[True, False, True]]), f32(2, 3), f32(2, 1)]),
    Case("Cast", [f32(3, 4) * 10], {"to": TensorProto.INT64}, id="Cast_to_int64"),
    Case("Cast", [f32(3, 4)], {"to": TensorProto.FLOAT16}, id="Cast_to_float16"),
    Case("Softmax", [f32(2, 3, 7)]),
    Case("Softmax", [f32(2, 3, 7)], {"axis": 1}, id="Softmax_axis1"),
    Case("LayerNormalization", [f32(2, 5, 8), f32(8), f32(8)], n_outputs=1),
    Case("LayerNormalization", [f32(2, 5, 8) + 100, f32(5, 8), f32(5, 8)], {"axis": 1, "epsilon": 1e-3},
         id="LayerNormalization_axis1_offset"),
    Case("InstanceNormalization", [f32(2, 4, 5, 6) * 3 + 5, f32(4), f32(4)]),
    Case("BatchNormalization", [f32(2, 4, 5, 6), f32(4), f32(4), f32(4), np.abs(f32(4)) + 0.5]),
    Case("MaxPool", [f32(1, 3, 9, 9)], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    Case("MaxPool", [f32(1, 3, 10, 10)], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
         id="MaxPool_ceil"),
    Case("MaxPool", [f32(1, 3, 10, 10)], {"kernel_shape": [2, 2], "dilations": [2, 2]}, id="MaxPool_dilated"),
    Case("AveragePool", [f32(1, 3, 9, 9)], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    Case("AveragePool", [f32(1, 3, 9, 9)], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1},
         id="AveragePool_count_pad"),
    Case("AveragePool", [f32(1, 3, 10, 10)], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
         id="AveragePool_ceil"),
    Case("AveragePool", [f32(1, 3, 7, 7)], {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1],
                                            "count_include_pad": 0}, id="AveragePool_poolformer"),
    Case("GlobalAveragePool", [f32(2, 3, 5, 6)]),
    Case("GlobalMaxPool", [f32(2, 3, 5, 6)]),
    Case("ReduceMean", [f32(2, 3, 4), i64(1, 2)]),
    Case("ReduceMean", [f32(2, 3, 4), i64(-1)], {"keepdims": 0}, id="ReduceMean_nokeep"),
    Case("ReduceSum", [f32(2, 3, 4), i64(1)]),
    Case("ReduceMax", [f32(2, 3, 4), i64(0)]),
    Case("ArgMax", [f32(3, 5)], {"axis": 1}),
    Case("Resize", [f32(1, 2, 4, 5), np.array([], np.float32), np.array([1, 1, 2, 2], np.float32)],
         {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
         id="Resize_nearest_torch"),
    Case("Resize", [f32(1, 2, 4, 5), np.array([], np.float32), np.array([1, 1, 2, 3], np.float32)],
         {"mode": "nearest"}, id="Resize_nearest_half_pixel"),
    Case("Resize", [f32(1, 2, 4, 5), np.array([], np.float32), np.array([], np.float32), i64(1, 2, 7, 3)],
         {"mode": "linear"}, id="Resize_linear_sizes"),
    Case("Resize", [f32(1, 2, 4, 5), np.array([], np.float32), np.array([1, 1, 2, 2], np.float32)],
         {"mode": "linear", "coordinate_transformation_mode": "align_corners"}, id="Resize_linear_align"),
    Case("Reshape", [f32(2, 3, 4), i64(0, -1)]),
    Case("Transpose", [f32(2, 3, 4)], {"perm": [2, 0, 1]}),
    Case("Concat", [f32(2, 3), f32(2, 5)], {"axis": 1}),
    Case("Split", [f32(6, 4), i64(2, 4)], {"axis": 0}, n_outputs=2),
    Case("Split", [f32(7, 4)], {"axis": 0, "num_outputs": 3}, n_outputs=3, id="Split_num_outputs"),
    Case("Slice", [f32(5, 6), i64(1, -4), i64(4, 100), i64(0, 1), i64(2, 1)]),
    Case("Slice", [f32(5, 6), i64(-1), i64(-100), i64(1), i64(-2)], id="Slice_reverse"),
    Case("Gather", [f32(5, 4), i64(0, -1, 2)], {"axis": 0}),
    Case("Gather", [f32(5, 4), np.array(1, np.int64)], {"axis": 1}, id="Gather_scalar"),
    Case("Unsqueeze", [f32(3, 4), i64(0, -1)]),
    Case("Squeeze", [f32(1, 3, 1, 4), i64(2)]),
    Case("Expand", [f32(3, 1), i64(2, 1, 4)]),
    Case("Shape", [f32(2, 3, 4)], {"start": 1}),
    Case("ConstantOfShape", [i64(2, 3)], {"value": numpy_helper.from_array(np.array([1.5], np.float32))}),
    Case("Range", [np.array(1, np.int64), np.array(10, np.int64), np.array(3, np.int64)]),
    Case("Flatten", [f32(2, 3, 4)], {"axis": 2}),
    Case("Pad", [f32(2, 3, 4), i64(0, 1, 2, 0, 2, 1)], {"mode": "constant"}),
    Case("Pad", [f32(2, 3, 4), i64(0, 1, 2, 0, 2, 1)], {"mode": "reflect"}, id="Pad_reflect"),
    Case("Pad", [f32(2, 3, 4), i64(0, 0, 1, 0, 1, 2)], {"mode": "edge"}, id="Pad_edge"),
    Case("Tile", [f32(2, 3), i64(2, 1)]),
    Case("CumSum", [f32(3, 4), np.array(1, np.int64)], {"exclusive": 1, "reverse": 1}),
]

FP16_OPS = ["Conv", "MatMul", "Add", "Softmax", "LayerNormalization", "Resize", "Sigmoid", "AveragePool",
            "InstanceNormalization", "Gelu"]


def _model(case, weights_as_initializers, dtype=None):
    inputs = [np.asarray(a) for a in case.inputs]
    if dtype is not None:
        inputs = [a.astype(dtype) if a.dtype == np.float32 else a for a in inputs]
    names = [f"in{i}" for i in range(len(inputs))]
    outputs = [f"out{i}" for i in range(case.n_outputs)]
    node = helper.make_node(case.op, names, outputs, **case.attrs)
    graph_inputs, initializers, feed = [], [], {}
    for i, (name, value) in enumerate(zip(names, inputs)):
        if i > 0 and weights_as_initializers:
            initializers.append(numpy_helper.from_array(value, name))
        else:
            elem = helper.np_dtype_to_tensor_dtype(value.dtype)
            graph_inputs.append(helper.make_tensor_value_info(name, elem, value.shape))
            feed[name] = value
    graph = helper.make_graph([node], "one_node", graph_inputs,
                              [helper.make_empty_tensor_value_info(o) for o in outputs], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])
    model.ir_version = 8
    return model, feed


def _check(case, weights_as_initializers, dtype=None):
    model, feed = _model(case, weights_as_initializers, dtype)
    if dtype == np.float16:
        # onnx.reference computes float16 in float16 (LayerNorm over offset data loses 5e-2);
        # the oracle is the float32 computation on the same float16 values, rounded.
        case32 = Case(case.op, [a.astype(np.float16).astype(np.float32) if a.dtype == np.float32 else a
                                for a in case.inputs], case.attrs, case.opset, case.n_outputs, case.id)
        model32, feed32 = _model(case32, weights_as_initializers)
        expected = [np.asarray(r).astype(np.float16) if np.asarray(r).dtype == np.float32 else r
                    for r in ReferenceEvaluator(model32).run(None, feed32)]
    else:
        expected = ReferenceEvaluator(model).run(None, feed)
    session = InferenceSession(model, allow_fallback=False, engine="gncpu")
    got = session.run(None, feed)
    assert len(got) == len(expected)
    for ours, ref in zip(got, expected):
        ref = np.asarray(ref)
        assert ours.shape == ref.shape, f"{case.id}: shape {ours.shape} != reference {ref.shape}"
        assert ours.dtype == ref.dtype, f"{case.id}: dtype {ours.dtype} != reference {ref.dtype}"
        if np.issubdtype(ref.dtype, np.floating):
            rtol = RTOL[ref.dtype]
            scale = max(float(np.abs(ref.astype(np.float64)).max()), 1.0) if ref.size else 1.0
            np.testing.assert_allclose(ours.astype(np.float64), ref.astype(np.float64), rtol=rtol, atol=rtol * scale,
                                       err_msg=case.id)
        else:
            np.testing.assert_array_equal(ours, ref, err_msg=case.id)


@pytest.mark.parametrize("weights_as_initializers", [True, False], ids=["initializers", "graph_inputs"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_op_matches_reference(case, weights_as_initializers):
    _check(case, weights_as_initializers)


FP16_CASES = [c for c in CASES if c.op in FP16_OPS and c.inputs[0].dtype == np.float32]


@pytest.mark.parametrize("case", FP16_CASES, ids=[c.id for c in FP16_CASES])
def test_op_float16_matches_reference(case):
    _check(case, True, np.float16)


@pytest.mark.parametrize("op", ["Conv", "MatMul", "Softmax", "LayerNormalization"])
def test_op_float64_matches_reference(op):
    case = next(c for c in CASES if c.op == op)
    _check(case, False, np.float64)


def test_conv_error_names_node_and_shapes():
    case = Case("Conv", [f32(1, 3, 8, 8), f32(4, 2, 3, 3)], {})
    model, feed = _model(case, True)
    session = InferenceSession(model, allow_fallback=False, engine="gncpu")
    with pytest.raises(RuntimeError, match=r"Conv.*group=1 does not fit input channels 3.*\(4, 2, 3, 3\)"):
        session.run(None, feed)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_before_opset13_coerces_to_2d(op):
    # Opsets < 13 normalize over all dims from `axis` on (the input is coerced to 2-D there).
    # onnx.reference ignores that coercion, so the expectation is computed here.
    x = f32(2, 3, 7)
    model, feed = _model(Case(op, [x], {"axis": 1}, opset=11), True)
    (got,) = InferenceSession(model, allow_fallback=False, engine="gncpu").run(None, feed)
    flat = x.reshape(2, 21).astype(np.float64)
    log_probs = flat - flat.max(axis=1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(axis=1, keepdims=True))
    expected = (log_probs if op == "LogSoftmax" else np.exp(log_probs)).reshape(x.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_pad_negative_pads_crop():
    x = f32(2, 3, 4)
    model, feed = _model(Case("Pad", [x, i64(0, 0, -1, 0, 1, 2)], {"mode": "edge"}), True)
    (got,) = InferenceSession(model, allow_fallback=False, engine="gncpu").run(None, feed)
    expected = np.pad(x[:, :, 1:], [(0, 0), (0, 1), (0, 2)], mode="edge")
    np.testing.assert_array_equal(got, expected)


def _conv_transpose_oracle(x, w, strides, dilations, group, begins, out_dims):
    """ConvTranspose by its definition: every input element scatters x * w into
    the output at i * stride + k * dilation - pad_begin (float64 loops)."""
    n, c = x.shape[:2]
    cg, mg = c // group, w.shape[1]
    y = np.zeros((n, mg * group) + tuple(out_dims))
    for index in np.ndindex(*x.shape[2:]):
        for tap in np.ndindex(*w.shape[2:]):
            out = tuple(i * s + k * d - b for i, k, s, d, b in zip(index, tap, strides, dilations, begins))
            if not all(0 <= o < size for o, size in zip(out, out_dims)):
                continue
            for g in range(group):
                contribution = np.einsum("nc,cm->nm", x[(slice(None), slice(g * cg, (g + 1) * cg)) + index],
                                         w[(slice(g * cg, (g + 1) * cg), slice(None)) + tap].astype(np.float64))
                y[(slice(None), slice(g * mg, (g + 1) * mg)) + out] += contribution
    return y


@pytest.mark.parametrize("x_shape, w_shape, attrs, begins, out_dims", [
    # onnx.reference cannot run these two (groups; odd output_shape padding); onnxruntime agrees with us on both.
    ((2, 4, 9), (4, 2, 4), {"group": 2, "strides": [3], "dilations": [2], "pads": [1, 2]}, [1], [28]),
    ((1, 3, 5, 5), (3, 2, 3, 3), {"strides": [2, 2], "output_shape": [10, 11]}, [1, 0], [10, 11]),
], ids=["grouped_dilated_1d", "output_shape"])
def test_conv_transpose_matches_definition(x_shape, w_shape, attrs, begins, out_dims):
    x, w = f32(*x_shape), f32(*w_shape)
    model, feed = _model(Case("ConvTranspose", [x, w], attrs), True)
    (got,) = InferenceSession(model, allow_fallback=False, engine="gncpu").run(None, feed)
    expected = _conv_transpose_oracle(x.astype(np.float64), w, attrs["strides"], attrs.get("dilations", [1] * len(begins)),
                                      attrs.get("group", 1), begins, out_dims)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_erf_float64_is_exact():
    import math

    from gncpu.onnx.ops import elementwise

    # float64 goes through libm's erf in the native kernel (no scipy involved).
    x = np.concatenate([np.linspace(-7, 7, 2001), [0.0, 1e-30, -1e-8, 2.5, -2.5, 30.0, np.inf, -np.inf]])
    expected = np.array([math.erf(v) for v in x])
    np.testing.assert_allclose(elementwise.erf_array(x), expected, rtol=1e-14, atol=1e-300)
    assert elementwise.erf_array(np.float32([0.5])).dtype == np.float32


@pytest.mark.parametrize("case_id", ["Conv_winograd_odd", "Conv_winograd_asym_pads", "Conv_threaded_strided",
                                     "Conv2d_g2_4to6_s1p2d2", "Conv1d_w2v_strided_grouped"])
def test_conv_blocking_for_memory_matches_reference(case_id, monkeypatch):
    # Big convs are computed in bands / column blocks bounded in bytes; shrink the bounds so
    # these small cases take many blocks, and check the seams.
    from gncpu.onnx.ops import conv, winograd

    monkeypatch.setattr(winograd, "_BAND_BYTES", 1 << 15)
    monkeypatch.setattr(conv, "_MAX_BLOCK_BYTES", 1 << 12)
    _check(next(c for c in CASES if c.id == case_id), True)


def test_weights_fed_as_inputs_are_never_cached_stale():
    # Derived weights (float32 copies, Winograd transforms) are cached only for the session's
    # read-only constants: a caller's array changed in place between runs must be re-read.
    x, w = f32(1, 128, 8, 8), f32(128, 128, 3, 3)
    model, feed = _model(Case("Conv", [x, w], {"pads": [1, 1, 1, 1]}), False, np.float16)
    session = InferenceSession(model, allow_fallback=False, engine="gncpu")
    reference = ReferenceEvaluator(model)
    for scale in (1.0, -0.5):
        feed["in1"] *= np.float16(scale)
        np.testing.assert_allclose(session.run(None, feed)[0].astype(np.float32),
                                   reference.run(None, feed)[0].astype(np.float32), rtol=2e-2, atol=2e-2)


def test_constant_weight_derivations_are_computed_once():
    from gncpu.onnx.ops import derived

    model, feed = _model(Case("Conv", [f32(1, 128, 8, 8), f32(128, 128, 3, 3)], {"pads": [1, 1, 1, 1]}), True,
                         np.float16)
    session = InferenceSession(model, allow_fallback=False, engine="gncpu")
    first = session.run(None, feed)[0]
    cached = len(derived._cache)
    assert cached >= 2  # the float32 copy of the weights and its Winograd transform
    np.testing.assert_array_equal(session.run(None, feed)[0], first)
    assert len(derived._cache) == cached
