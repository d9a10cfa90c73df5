"""torch.compile(model, backend="gncpu"): group norms (+ activation) run gncpu's op.

The backend traces each captured graph to aten ops (AOTAutograd) with
inductor's decompositions, except for the group norm and the activations
that may follow it, which stay whole so that `rewrite_group_norms` can find
them:

    native_group_norm(x, w, b, N, C, HxW, G, eps)[0] -> silu/gelu/relu
      (the norm's only user)          => torch.ops.gncpu.group_norm(x, G, w, b, eps, act)

A norm whose mean or rstd is used (training: saved for the backward) is
left alone. Activations left unfused are decomposed again as inductor would
have done, and the graph goes to inductor, or runs eagerly where inductor is
unavailable (no C++ compiler) or with options={"inductor": False}.
"""
import functools
import logging
import operator

import torch

from ._op import _CPU_DTYPES

__all__ = ["gncpu_backend", "rewrite_group_norms", "inductor_available"]

log = logging.getLogger("gncpu.torch")
aten = torch.ops.aten
_GROUP_NORM = aten.native_group_norm.default
# ops kept out of the decompositions so the rewrite sees them whole
_KEPT_WHOLE = (aten.native_group_norm.default, aten.group_norm.default, aten.silu.default,
               aten.gelu.default)
_REDECOMPOSED = (aten.silu.default, aten.gelu.default)


def _activation(node):
    """The gncpu activation name of an aten activation node, or None."""
    if node.op != "call_function":
        return None
    if node.target is aten.silu.default:
        return "silu"
    if node.target is aten.relu.default:
        return "relu"
    if node.target is aten.gelu.default:
        approximate = node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none")
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(approximate)
    return None


def _only_output(node):
    """The getitem(node, 0) user if it is the norm's only used output, else None."""
    first = None
    for user in node.users:
        if user.op != "call_function" or user.target is not operator.getitem:
            return None
        if user.args[1] == 0:
            first = user
        elif user.users:  # mean or rstd is used (e.g. saved for backward)
            return None
    return first


def _fake_value(arg):
    """A node's traced (fake) value; constants as they are."""
    return arg.meta.get("val") if isinstance(arg, torch.fx.Node) else arg


def rewrite_group_norms(gm):
    """Replace each eligible aten.native_group_norm (and the activation that is
    its only user) in the graph by torch.ops.gncpu.group_norm, in place.
    Returns (norms rewritten, activations fused)."""
    graph = gm.graph
    rewritten = fused = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not _GROUP_NORM:
            continue
        x, weight, bias, _, _, _, groups, eps = node.args
        value = _fake_value(x)
        if value is None or value.dtype not in _CPU_DTYPES or value.device.type not in ("cpu", "cuda"):
            continue
        output = _only_output(node)
        if output is None:
            continue
        replaced, activation = output, None
        if len(output.users) == 1:
            user = next(iter(output.users))
            if _activation(user) is not None and user.args[0] is output:
                replaced, activation = user, _activation(user)
        args = (x, groups, weight, bias, float(eps), activation)
        with graph.inserting_before(replaced):
            new = graph.call_function(torch.ops.gncpu.group_norm.default, args)
        if "val" in replaced.meta:
            fake = [_fake_value(a) for a in args]
            with value.fake_mode:
                new.meta["val"] = torch.ops.gncpu.group_norm.default(*fake)
        replaced.replace_all_uses_with(new)
        for dead in [replaced, output, *node.users, node]:
            if dead in graph.nodes and not dead.users:
                graph.erase_node(dead)
        rewritten += 1
        fused += activation is not None
    if rewritten:
        graph.lint()
        gm.recompile()
    return rewritten, fused


def _has_unfused_activations(gm):
    return any(n.op == "call_function" and n.target in _REDECOMPOSED for n in gm.graph.nodes)


def _redecompose(gm, example_inputs, table):
    """Decompose the activations the rewrite did not take, as inductor does."""
    from torch._guards import detect_fake_mode
    from torch.fx.experimental.proxy_tensor import make_fx

    decompositions = {op: table[op] for op in _REDECOMPOSED if op in table}
    fake_mode = detect_fake_mode(example_inputs)
    with fake_mode:
        return make_fx(gm, decomposition_table=decompositions)(*example_inputs)


@functools.lru_cache(maxsize=None)
def inductor_available():
    """True if inductor imports and finds a C++ compiler."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
        return True
    except Exception as exc:  # ImportError, or no compiler: run eagerly
        log.info("gncpu backend: inductor unavailable (%s: %s), running eagerly", type(exc).__name__, exc)
        return False


def _report(rewritten, fused):
    log.info("gncpu backend: %d group norm(s) rewritten, %d activation(s) fused", rewritten, fused)
    gncpu_backend.stats["rewritten"] += rewritten
    gncpu_backend.stats["fused"] += fused


def _inductor(gm, example_inputs, freezing):
    from torch._inductor.compile_fx import compile_fx, compile_fx_inner
    from torch._inductor.decomposition import select_decomp_table

    full = select_decomp_table()
    table = {op: fn for op, fn in full.items() if op not in _KEPT_WHOLE}

    def inner_compile(graph_module, inputs, **kwargs):
        _report(*rewrite_group_norms(graph_module))
        if _has_unfused_activations(graph_module):
            graph_module = _redecompose(graph_module, inputs, full)
        return compile_fx_inner(graph_module, inputs, **kwargs)

    patches = {"freezing": True} if freezing else None
    return compile_fx(gm, example_inputs, inner_compile=inner_compile, decompositions=table,
                      config_patches=patches)


def _eager(gm, example_inputs):
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def forward_compiler(graph_module, inputs):
        _report(*rewrite_group_norms(graph_module))
        return make_boxed_func(graph_module.forward)

    def backward_compiler(graph_module, inputs):
        return make_boxed_func(graph_module.forward)

    backend = aot_autograd(fw_compiler=forward_compiler, bw_compiler=backward_compiler,
                           decompositions={})
    return backend(gm, example_inputs)


def gncpu_backend(gm, example_inputs, options=None):
    """The "gncpu" torch.compile backend. options: {"inductor": False} runs
    the rewritten graphs eagerly instead of through inductor; {"freezing":
    True} sets inductor's freezing for these graphs (parameters become
    constants, convolutions use prepacked oneDNN weights: later changes to
    the weights are not seen)."""
    options = dict(options or {})
    use_inductor = options.pop("inductor", None)
    freezing = bool(options.pop("freezing", False))
    if options:
        raise ValueError(f"gncpu backend: unknown options {sorted(options)}; expected 'inductor', "
                         f"'freezing'")
    if use_inductor is None:
        use_inductor = inductor_available()
    if use_inductor:
        return _inductor(gm, example_inputs, freezing)
    return _eager(gm, example_inputs)


# graphs rewritten and activations fused since import (tests and reports read it)
gncpu_backend.stats = {"rewritten": 0, "fused": 0}


def register():
    from torch._dynamo import list_backends, register_backend

    if "gncpu" not in list_backends(exclude_tags=()):
        register_backend(gncpu_backend, name="gncpu")
