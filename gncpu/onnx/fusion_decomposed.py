"""Recognize group normalization spelled out in primitive ops, and prove it.

Exporters write GN many ways: torch as Reshape -> InstanceNormalization ->
Reshape -> Mul -> Add; tf2onnx/Keras as Reshape to (N, H, W, G, C/G) ->
ReduceMean -> Sub -> Mul -> ReduceMean -> Add -> Sqrt -> Reciprocal -> Mul ...;
the inlined ONNX function body with Mean/Square/Sub/Sqrt/Div between Reshapes.
Rather than one hand-written matcher per spelling (each missing the next
exporter's variant), this pass *evaluates* the subgraph that starts at a
tensor x symbolically and checks that the result is, exactly,

    y = (x - mean) * rstd * gamma_c + beta_c,   rstd = 1 / sqrt(var + eps)

Every value reached from x is a polynomial in five per-element atoms,

    X (x itself), M (group mean of x), Q (group mean of x^2), R (rstd, with one eps),
    K (elements per group: ReduceSum is K times a mean, Keras 2 divides by it),

whose coefficients are per-channel vectors (C,). A value also carries its
*view*: how the (N, C, *spatial) elements of x are laid out in its shape
(x itself, (N, G, L), (N, G, C/G, *spatial), (N, C, HW), or channels-last
(N, *spatial, G, C/G)), which decides what a constant operand means per
channel and which axes ReduceMean must average over to be a group mean.
Reshapes are followed only when their target provably produces one of these
views (static dims, or `Shape(x)` slices), ReduceMean only over exactly a
group's axes, Sqrt only of `Q - M^2 + eps` (i.e. var + eps, however the
variance was written), constants only when they are per-channel.

Constants may also be tensors filled through ConstantOfShape(Shape(x)) (Keras'
ones_like / zeros_like), and a Where(Equal(K, 0), 0, v) guard (div_no_nan)
is v, since a group is never empty.

Anything the evaluator cannot prove stops the walk there, so an unproven
pattern is left alone: the graph only changes when the algebra closes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
from onnx.helper import np_dtype_to_tensor_dtype

from .fusion_facts import Dim, GraphIndex, canonical_dim, const_value, is_float_cast, shape_entries
from .graph import Node

# Monomial key: exponents of (X, M, Q, R, K). R**-1 is the standard
# deviation; K is the number of elements in a group (ReduceSum = K * mean).
Key = Tuple[int, int, int, int, int]
X: Key = (1, 0, 0, 0, 0)
ONE: Key = (0, 0, 0, 0, 0)
X_R: Key = (1, 0, 0, 1, 0)
M_R: Key = (0, 1, 0, 1, 0)
_STD: Key = (0, 0, 0, -1, 0)
_Q: Key = (0, 0, 1, 0, 0)
_M2: Key = (0, 2, 0, 0, 0)
_K: Key = (0, 0, 0, 0, 1)

_ROLE_N, _ROLE_C, _ROLE_G, _ROLE_CG, _ROLE_S, _ROLE_L = "N", "C", "G", "Cg", "S", "L"


class NotProven(Exception):
    """The subgraph is not (provably) group normalization."""


@dataclass(frozen=True)
class View:
    """How a value's axes hold x's elements: one role per axis and its extent
    (an int, a Dim of x, or None if unknown)."""
    kind: str                 # "x", "g_flat", "g_split", "c_flat", "g_cl"
    roles: Tuple[str, ...]
    dims: Tuple[object, ...]
    within: Optional[frozenset]  # the axes a group's mean averages over; None: not a group view


@dataclass
class Value:
    view: View
    mask: Tuple[bool, ...]   # True where the value has the view's full extent, False where it is 1
    poly: Dict[Key, np.ndarray]
    dtype: Optional[int]     # TensorProto elem type if a Cast changed it; None = x's own


@dataclass
class Match:
    x: str
    output: str
    num_groups: int
    epsilon: float
    gamma: np.ndarray
    beta: np.ndarray
    channels_last: bool
    removed: List[Node]
    pattern: str


class _Context:
    def __init__(self, index: GraphIndex, shapes, dtypes, x: str, channels_last: bool):
        self.index = index
        self.x = x
        self.channels_last = channels_last
        shape = shapes[x]
        self.rank = len(shape)
        self.xdims = tuple(d if d is not None else canonical_dim(index, Dim(x, i)) for i, d in enumerate(shape))
        channels = shape[-1] if channels_last else shape[1]
        if not isinstance(channels, int):
            raise NotProven("channel count unknown")
        self.channels = channels
        self.groups: Optional[int] = None
        self.eps: Optional[float] = None
        self.x_dtype = dtypes.get(x)
        self.values: Dict[str, Value] = {}
        self.used_instance_norm = False
        spatial = shape[1:-1] if channels_last else shape[2:]
        self.hw = int(np.prod(spatial)) if all(isinstance(d, int) for d in spatial) else None

    # ---- views -----------------------------------------------------------
    def x_view(self) -> View:
        r = self.rank
        if self.channels_last:
            roles = (_ROLE_N,) + (_ROLE_S,) * (r - 2) + (_ROLE_C,)
        else:
            roles = (_ROLE_N, _ROLE_C) + (_ROLE_S,) * (r - 2)
        return View("x", roles, self.xdims, None)

    def candidate_views(self, groups: int) -> List[View]:
        c, d, r = self.channels, self.xdims, self.rank
        per_group = c // groups
        if self.channels_last:
            spatial = (_ROLE_S,) * (r - 2)
            return [View("g_cl", (_ROLE_N,) + spatial + (_ROLE_G, _ROLE_CG),
                         d[:-1] + (groups, per_group),
                         frozenset(range(1, r - 1)) | {r})]
        length = None if self.hw is None else per_group * self.hw
        return [
            View("g_flat", (_ROLE_N, _ROLE_G, _ROLE_L), (d[0], groups, length), frozenset({2})),
            View("g_split", (_ROLE_N, _ROLE_G, _ROLE_CG) + (_ROLE_S,) * (r - 2),
                 (d[0], groups, per_group) + d[2:], frozenset(range(2, r + 1))),
        ]

    def c_flat_view(self) -> Optional[View]:
        if self.channels_last:
            return None
        return View("c_flat", (_ROLE_N, _ROLE_C, _ROLE_L), (self.xdims[0], self.channels, self.hw), None)

    def extent(self, view: View, axis: int):
        role = view.roles[axis]
        if role == _ROLE_C:
            return self.channels
        if role == _ROLE_G:
            return self.groups
        if role == _ROLE_CG:
            return self.channels // self.groups
        dim = view.dims[axis]
        return dim if isinstance(dim, int) else None

    # ---- constants -------------------------------------------------------
    def per_channel(self, value: np.ndarray, view: View) -> Tuple[np.ndarray, Tuple[bool, ...]]:
        """A constant operand in `view` as a (C,) vector and its mask; it must
        not vary along batch or spatial axes nor widen the value's rank."""
        value = np.asarray(value)
        if value.dtype.kind != "f" or value.ndim > len(view.roles):
            raise NotProven("constant is not a float broadcastable into the view")
        shape = (1,) * (len(view.roles) - value.ndim) + value.shape
        mask = []
        for axis, size in enumerate(shape):
            full = self.extent(view, axis)
            role = view.roles[axis]
            if size == 1:
                mask.append(full == 1)
            elif role in (_ROLE_C, _ROLE_G, _ROLE_CG) and size == full:
                mask.append(True)
            else:
                raise NotProven(f"constant of shape {value.shape} varies along a non-channel axis")
        data = value.reshape(shape).astype(np.float64)
        channel_axes = [a for a, role in enumerate(view.roles) if role in (_ROLE_C, _ROLE_G, _ROLE_CG)]
        other = tuple(a for a in range(len(shape)) if a not in channel_axes)
        core = data.squeeze(axis=other) if other else data
        roles = [view.roles[a] for a in channel_axes]
        if roles == [_ROLE_C]:
            vector = np.broadcast_to(core.reshape(-1), (self.channels,))
        else:
            groups, per_group = self.groups, self.channels // self.groups
            if roles == [_ROLE_G]:
                core = core.reshape(-1, 1)
            vector = np.broadcast_to(core, (groups, per_group)).reshape(-1)
        return np.array(vector, dtype=np.float64), tuple(mask)

    # ---- reshape targets -------------------------------------------------
    def dims_of(self, name: str):
        value = self.values.get(name)
        if value is not None:
            if not all(value.mask):
                return None
            return list(value.view.dims)
        shape = self.index.shapes.get(name)
        if shape is None:
            return None
        return [d if d is not None else canonical_dim(self.index, Dim(name, i)) for i, d in enumerate(shape)]

    def reshape(self, node: Node, value: Value) -> Value:
        if not all(value.mask):
            raise NotProven("reshape of a broadcast value")
        target = shape_entries(self.index, node.inputs[1], self.dims_of)
        if target is None:
            raise NotProven("reshape target not provable")
        target = [canonical_dim(self.index, t) if isinstance(t, Dim) else t for t in target]
        if not node.attrs.get("allowzero", 0):
            src = value.view.dims
            if any(t == 0 and i >= len(src) for i, t in enumerate(target)):
                raise NotProven("reshape copies a dimension the input does not have")
            target = [src[i] if t == 0 else t for i, t in enumerate(target)]
        if sum(1 for t in target if t == -1) > 1:
            raise NotProven("two inferred dims")
        plain = [self.x_view()]
        c_flat = self.c_flat_view()
        if c_flat is not None:
            plain.append(c_flat)
        group_axis = self.rank - 1 if self.channels_last else 1
        proposed = target[group_axis] if len(target) > group_axis else None
        groups = self.groups or proposed
        grouped = []
        if isinstance(groups, int) and groups > 0 and self.channels % groups == 0:
            grouped = self.candidate_views(groups)
        # With G = C (or a rank-2 x) a group view and x's own view can have the
        # same dims: the tensor is the same, only its reading differs. A reshape
        # is there to change the reading, so prefer the other family.
        views = plain + grouped if value.view.within is not None else grouped + plain
        for view in views:
            if _matches(target, view.dims):
                if view.within is not None:
                    self.groups = groups
                return Value(view, (True,) * len(view.dims), value.poly, value.dtype)
        raise NotProven(f"reshape target {target} is not a group view of x")


def _matches(target, dims) -> bool:
    if len(target) != len(dims):
        return False
    return all(t == -1 or (d is not None and t == d and type(t) is type(d)) for t, d in zip(target, dims))


# ----------------------------------------------------------------------------
# polynomials

def _add(a, b, sign=1.0):
    out = {k: v.copy() for k, v in a.items()}
    for key, coef in b.items():
        out[key] = out[key] + sign * coef if key in out else sign * coef
    return {k: v for k, v in out.items() if np.any(v != 0)}


def _mul(a, b):
    out = {}
    for ka, va in a.items():
        for kb, vb in b.items():
            key = tuple(i + j for i, j in zip(ka, kb))
            out[key] = out[key] + va * vb if key in out else va * vb
    return {k: v for k, v in out.items() if np.any(v != 0)}


def _scale(a, factor):
    return {k: v * factor for k, v in a.items()}


def _is_uniform(vector) -> bool:
    return bool(np.all(vector == vector[0]))


class _Evaluator:
    def __init__(self, ctx: _Context):
        self.ctx = ctx

    def operand(self, name: str, view: View):
        """A node input as (poly, mask, dtype): a region value, a constant, or
        a tensor built from filled constants (Keras' ones_like / zeros_like)."""
        ctx = self.ctx
        value = ctx.values.get(name)
        if value is None:
            const = const_value(ctx.index, name)
            if const is not None:
                vector, mask = ctx.per_channel(const, view)
                return {ONE: vector}, mask, None
            value = self.filled(name)
            if value is None:
                raise NotProven(f"operand {name!r} is neither derived from x nor constant")
        if value.view != view:
            raise NotProven("operands in different views")
        return value.poly, value.mask, value.dtype

    def filled(self, name: str, depth: int = 0) -> Optional[Value]:
        """Evaluate `name` if it derives only from ConstantOfShape(Shape(...))
        with one of the views' shapes, and constants; None otherwise."""
        ctx = self.ctx
        node = ctx.index.producer.get(name)
        if node is None or node.domain != "" or depth > 8 or len(node.outputs) != 1:
            return None
        if node.op_type == "ConstantOfShape":
            value = self.constant_of_shape(node)
        else:
            # (a Reshape's target is a shape expression, proven by the reshape itself)
            data = node.inputs[:1] if node.op_type == "Reshape" else node.inputs
            for i in data:
                if i and i not in ctx.values and const_value(ctx.index, i) is None \
                        and self.filled(i, depth + 1) is None:
                    return None
            if not any(i in ctx.values for i in node.inputs):
                return None
            try:
                value = self.node(node)
            except NotProven:
                return None
        if value is not None:
            ctx.values[name] = value
        return value

    def constant_of_shape(self, node) -> Optional[Value]:
        ctx = self.ctx
        dims = shape_entries(ctx.index, node.inputs[0], ctx.dims_of)
        if dims is None or -1 in dims or 0 in dims:
            return None
        dims = [canonical_dim(ctx.index, d) if isinstance(d, Dim) else d for d in dims]
        fill = node.attrs.get("value")
        fill = np.zeros(1, np.float32) if fill is None else np.asarray(fill).ravel()
        if fill.size != 1 or fill.dtype.kind != "f":
            return None
        views = [ctx.x_view()] + (ctx.candidate_views(ctx.groups) if ctx.groups else [])
        for view in views:
            if _matches(dims, view.dims):
                full = (True,) * len(view.dims)
                return Value(view, full, {ONE: np.full(ctx.channels, float(fill[0]))} if fill[0] else {}, None)
        return None

    def node(self, node: Node) -> Value:
        if node.domain != "" or len(node.outputs) != 1:
            raise NotProven("not a plain ai.onnx single-output node")
        ctx, op = self.ctx, node.op_type
        region = [ctx.values[i] for i in node.inputs if i in ctx.values]
        first = region[0]
        view = first.view
        if op in ("Add", "Sub", "Mul", "Div"):
            (pa, ma, da), (pb, mb, db) = (self.operand(i, view) for i in node.inputs[:2])
            mask = tuple(x or y for x, y in zip(ma, mb))
            dtype = da if da is not None else db
            if op == "Add":
                poly = _add(pa, pb)
            elif op == "Sub":
                poly = _add(pa, pb, -1.0)
            elif op == "Mul":
                poly = _mul(pa, pb)
            else:
                poly = _mul(pa, self.reciprocal(pb))
            return Value(view, mask, poly, dtype)
        if op == "Neg":
            return Value(view, first.mask, _scale(first.poly, -1.0), first.dtype)
        if op == "Identity":
            return first
        if op == "Cast":
            if not is_float_cast(node):
                raise NotProven("cast to a non-float type")
            return Value(view, first.mask, first.poly, node.attrs["to"])
        if op == "CastLike":
            like = const_value(ctx.index, node.inputs[1])
            if node.inputs[0] not in ctx.values or like is None or np.asarray(like).dtype.kind != "f":
                raise NotProven("CastLike to an unknown type")
            return Value(view, first.mask, first.poly, np_dtype_to_tensor_dtype(np.asarray(like).dtype))
        if op == "Where":
            return self.where_nonzero(node)
        if node.inputs[0] not in ctx.values:
            raise NotProven(f"{op} with x only in a secondary input")
        if op == "Reshape":
            return ctx.reshape(node, first)
        if op in ("ReduceMean", "ReduceSum"):
            return self.reduce_mean(node, first)

        if op == "Sqrt":
            return Value(view, first.mask, self.sqrt(first.poly), first.dtype)
        if op == "Reciprocal":
            return Value(view, first.mask, self.reciprocal(first.poly), first.dtype)
        if op == "Pow":
            return Value(view, first.mask, self.power(node, first.poly), first.dtype)
        if op == "InstanceNormalization":
            return self.instance_norm(node, first)
        raise NotProven(f"{op} is not part of a group normalization")

    def reciprocal(self, poly):
        if len(poly) != 1:
            raise NotProven("reciprocal of a sum")
        (key, coef), = poly.items()
        if key[:3] != (0, 0, 0) or np.any(coef == 0):
            raise NotProven("reciprocal of something other than a power of the std or group size")
        return {(0, 0, 0, -key[3], -key[4]): 1.0 / coef}

    def sqrt(self, poly):
        """sqrt(var + eps) -> std. The variance may have been written as
        mean((x - mean)^2) or mean(x^2) - mean^2: both reduce to Q - M^2."""
        if set(poly) - {_Q, _M2, ONE} or _Q not in poly or _M2 not in poly:
            raise NotProven("sqrt of something other than var + eps")
        if not (np.all(poly[_Q] == 1.0) and np.all(np.isclose(poly[_M2], -1.0, rtol=1e-12, atol=0))):
            raise NotProven("sqrt of a scaled variance")
        eps = poly.get(ONE, np.zeros(1))
        if not _is_uniform(eps) or eps[0] < 0:
            raise NotProven("eps is not one non-negative scalar")
        self.set_eps(float(eps[0]))
        return {_STD: np.ones(self.ctx.channels)}

    def set_eps(self, eps):
        if self.ctx.eps is not None and not np.isclose(self.ctx.eps, eps, rtol=1e-6, atol=0):
            raise NotProven("two different epsilons")
        self.ctx.eps = eps

    def power(self, node, poly):
        exponent = const_value(self.ctx.index, node.inputs[1])
        if exponent is None or np.size(exponent) != 1:
            raise NotProven("Pow with a non-constant exponent")
        e = float(np.asarray(exponent).ravel()[0])
        if e == 1.0:
            return poly
        if e == 2.0:
            return _mul(poly, poly)
        if e == 0.5:
            return self.sqrt(poly)
        if e == -0.5:
            return self.reciprocal(self.sqrt(poly))
        if e == -1.0:
            return self.reciprocal(poly)
        raise NotProven(f"Pow exponent {e}")

    def where_nonzero(self, node) -> Value:
        """Where(Equal(count, 0), 0, v) -> v: the div_no_nan guard Keras puts
        around a division by a group's element count, which is never 0 here."""
        ctx = self.ctx
        cond, _, picked = node.inputs
        test = ctx.index.producer.get(cond)
        value = ctx.values.get(picked)
        if value is None or test is None or test.domain != "" or test.op_type != "Equal":
            raise NotProven("Where other than a div_no_nan guard")
        count = next((ctx.values[i] for i in test.inputs if i in ctx.values), None)
        zero = next((const_value(ctx.index, i) for i in test.inputs if i not in ctx.values), None)
        if count is None or zero is None or np.any(np.asarray(zero) != 0):
            raise NotProven("Where other than a div_no_nan guard")
        if set(count.poly) != {_K} or np.any(count.poly[_K] <= 0):
            raise NotProven("Where guarding something other than a group size")
        if const_value(ctx.index, node.inputs[1]) is None:
            raise NotProven("Where with a non-constant fallback")
        mask = tuple(a or b for a, b in zip(value.mask, count.mask))
        return Value(value.view, mask, value.poly, value.dtype)

    def reduce_mean(self, node, value: Value) -> Value:
        ctx, view = self.ctx, value.view
        if view.within is None:
            raise NotProven(f"{node.op_type} outside a group view")
        axes = node.attrs.get("axes")
        if len(node.inputs) > 1 and node.inputs[1]:
            axes = const_value(ctx.index, node.inputs[1])
        if axes is None or not node.attrs.get("keepdims", 1):
            raise NotProven(f"{node.op_type} over all axes or without keepdims")
        rank = len(view.roles)
        axes = frozenset(int(a) % rank for a in np.asarray(axes).ravel())
        if axes != view.within:
            raise NotProven(f"{node.op_type} over axes {sorted(axes)}, a group is {sorted(view.within)}")
        groups, per_group = ctx.groups, ctx.channels // ctx.groups
        out = {}
        counted = 1 if node.op_type == "ReduceSum" else 0
        for (x, m, q, r, k), coef in value.poly.items():
            # The mean of a group treats the coefficient as a common factor:
            # only true if it is the same for every channel of the group.
            if np.any(coef.reshape(groups, per_group) != coef.reshape(groups, per_group)[:, :1]):
                raise NotProven("per-channel factor inside a group mean")
            if x == 1:
                key = (0, m + 1, q, r, k + counted)
            elif x == 2:
                key = (0, m, q + 1, r, k + counted)
            elif x == 0:
                key = (0, m, q, r, k + counted)
            else:
                raise NotProven("mean of x^3")
            out[key] = out[key] + coef if key in out else coef
        mask = tuple(False if a in axes else bit for a, bit in enumerate(value.mask))
        return Value(view, mask, {k: v for k, v in out.items() if np.any(v != 0)}, value.dtype)

    def instance_norm(self, node, value: Value) -> Value:
        ctx, view = self.ctx, value.view
        rank = len(view.roles)
        if view.kind == "x" and not ctx.channels_last and ctx.groups in (None, ctx.channels):
            # On x itself an instance norm is GN with G = C (exporters drop
            # the no-op Reshape(x, [N, C, -1]) of GroupNorm(C, C)).
            ctx.groups = ctx.channels
        elif view.within != frozenset(range(2, rank)) or view.roles[1] != _ROLE_G:
            raise NotProven("InstanceNormalization over something other than groups")
        if set(value.poly) != {X} or not np.all(value.poly[X] == 1.0):
            raise NotProven("InstanceNormalization of a transformed x")
        scale = const_value(ctx.index, node.inputs[1])
        bias = const_value(ctx.index, node.inputs[2])
        # Per the exporters' contract the instance norm carries no affine of its
        # own (ones / zeros); anything else is not the pattern we were asked to prove.
        if scale is None or bias is None or np.shape(scale) != (ctx.groups,) or np.shape(bias) != (ctx.groups,):
            raise NotProven("InstanceNormalization weights not constant (G,)")
        if not (np.all(np.asarray(scale) == 1) and np.all(np.asarray(bias) == 0)):
            raise NotProven("InstanceNormalization with a non-unit scale or non-zero bias")
        self.set_eps(float(node.attrs.get("epsilon", 1e-5)))
        ctx.used_instance_norm = True
        ones = np.ones(ctx.channels)
        return Value(view, value.mask, {X_R: ones, M_R: -ones}, value.dtype)


def _gn_form(poly) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(gamma, beta) if poly is X*R*gamma - M*R*gamma + beta, else None."""
    if X_R not in poly or M_R not in poly or set(poly) - {X_R, M_R, ONE}:
        return None
    gamma = poly[X_R]
    if not np.allclose(poly[M_R], -gamma, rtol=1e-6, atol=1e-30):
        return None
    return gamma, poly.get(ONE, np.zeros_like(gamma))


# ----------------------------------------------------------------------------
# the walk

def find_match(index: GraphIndex, x: str, channels_last: bool) -> Optional[Match]:
    """The largest group normalization computed from x, or None."""
    shapes, dtypes = index.shapes, index.dtypes
    if x not in shapes or len(shapes[x]) < 2:
        return None
    try:
        ctx = _Context(index, shapes, dtypes, x, channels_last)
    except NotProven:
        return None
    ctx.values[x] = Value(ctx.x_view(), (True,) * ctx.rank, {X: np.ones(ctx.channels)}, None)
    evaluator = _Evaluator(ctx)
    candidates = []
    consumers = index.consumers
    start = min((index.position[id(n)] for n in consumers.get(x, [])), default=None)
    if start is None:
        return None
    horizon = max(index.position[id(n)] for n in consumers[x])
    nodes = index.graph.nodes
    position = start
    while position <= horizon and position < len(nodes):
        node = nodes[position]
        position += 1
        if not any(i in ctx.values for i in node.inputs):
            continue
        try:
            value = evaluator.node(node)
        except NotProven:
            continue
        out = node.outputs[0]
        ctx.values[out] = value
        for consumer in consumers.get(out, []):
            horizon = max(horizon, index.position[id(consumer)])
        # Any view with exactly x's dims is x's layout (a reshape keeps the
        # element order): e.g. (N, G, L) with G = C, whose closing no-op
        # Reshape an exporter dropped.
        same_layout = value.view.kind == "x" or _matches(list(value.view.dims), ctx.xdims)
        if same_layout and all(value.mask) and value.dtype in (None, ctx.x_dtype):
            form = _gn_form(value.poly)
            if form is not None and ctx.eps is not None and ctx.groups is not None:
                candidates.append((out, form, ctx.eps, ctx.groups))
    for out, (gamma, beta), eps, groups in reversed(candidates):
        removed = _removable(index, ctx, x, out)
        if removed is not None:
            pattern = ("torch_instance_norm" if ctx.used_instance_norm
                       else "channels_last_decomposition" if channels_last else "decomposed_group_norm")
            return Match(x, out, groups, eps, gamma, beta, channels_last, removed, pattern)
    return None


def _removable(index: GraphIndex, ctx: _Context, x: str, end: str) -> Optional[List[Node]]:
    """The nodes replaced by one GroupNorm computing `end` from x, or None if
    some intermediate is needed elsewhere (a graph output, another consumer)."""
    closure, stack = {}, [end]
    while stack:
        name = stack.pop()
        if name == x or name not in ctx.values:
            continue
        node = index.producer[name]
        if id(node) in closure:
            continue
        closure[id(node)] = node
        stack.extend(i for i in node.inputs if i in ctx.values)
    removed = dict(closure)
    # Shape computations feeding only the removed reshapes die with them.
    changed = True
    while changed:
        changed = False
        for node in list(removed.values()):
            for name in node.inputs:
                producer = index.producer.get(name)
                if producer is None or id(producer) in removed or name == x:
                    continue
                if x in producer.outputs:
                    continue
                outs = [o for o in producer.outputs if o]
                if any(o in index.graph_outputs for o in outs):
                    continue
                if all(all(id(c) in removed for c in index.consumers.get(o, [])) for o in outs):
                    removed[id(producer)] = producer
                    changed = True
    for node in closure.values():
        for name in node.outputs:
            if name == end or not name:
                continue
            if name in index.graph_outputs:
                return None
            if any(id(c) not in removed for c in index.consumers.get(name, [])):
                return None
    return sorted(removed.values(), key=lambda n: index.position[id(n)])
