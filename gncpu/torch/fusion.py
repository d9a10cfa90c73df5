"""Fuse `v = self.norm(x); v = self.act(v)` in a module's forward source.

optimize() needs to know, from the model's code, that an activation module
is applied to a GroupNorm's output and to nothing else at that point. It
reads the forward's source (ast), finds each statement pair

    v = self.<norm>(<expr>)
    v = self.<act>(v)          # the same name: the un-activated v is gone

including a norm that is the last statement of an `if` branch followed by
the activation after the `if` (diffusers' ResnetBlock2D: norm2 sits in
three branches), and rewrites the pair into one call

    v = fused_call(self.<norm>, self.<act>, <expr>)

which at run time passes the activation to the gncpu GroupNorm if <act> is
still a plain SiLU/ReLU/GELU without hooks, and calls both modules
otherwise. Other uses of <act> (a shared `nonlinearity` applied to temb)
are untouched. The rewritten forward is compiled once per class.
"""
import ast
import copy
import inspect
import textwrap
import types

import torch

from .module import GroupNorm

__all__ = ["activation_of", "fused_call", "fused_forward"]


def activation_of(module):
    """The gncpu activation name a torch activation module computes, or None."""
    if module is None or module._forward_hooks or module._forward_pre_hooks:
        return None
    kind = type(module)
    if kind is torch.nn.SiLU:
        return "silu"
    if kind is torch.nn.ReLU:
        return "relu"
    if kind is torch.nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(module.approximate)
    return None


def can_fuse(norm, act):
    return isinstance(norm, GroupNorm) and norm.activation is None and activation_of(act) is not None


def fused_call(norm, act, x):
    if can_fuse(norm, act):
        return norm(x, activation=activation_of(act))
    return act(norm(x))


class _Sites:
    """The (norm attribute, activation attribute) pairs fused in one forward."""

    def __init__(self, self_name):
        self.self_name = self_name
        self.pairs = []

    def self_call(self, node):
        """'attr', 'arg' for `self.attr(arg)` with one positional argument, else None."""
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == self.self_name \
                and len(node.args) == 1 and not node.keywords \
                and not isinstance(node.args[0], ast.Starred):
            return node.func.attr, node.args[0]
        return None

    def assignment(self, stmt):
        """'target', 'attr', arg for `target = self.attr(arg)`, else None."""
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 \
                and isinstance(stmt.targets[0], ast.Name):
            call = self.self_call(stmt.value)
            if call is not None:
                return stmt.targets[0].id, call[0], call[1]
        return None

    def activation(self, stmt):
        """'var', 'attr' for `var = self.attr(var)`, else None."""
        found = self.assignment(stmt)
        if found and isinstance(found[2], ast.Name) and found[2].id == found[0]:
            return found[0], found[1]
        return None


def _fusable(stmt, var, sites):
    """Whether `stmt`, followed by the activation of `var`, ends in a norm call
    on some path (a branch of a trailing if counts)."""
    found = sites.assignment(stmt)
    if found:
        return found[0] == var
    if isinstance(stmt, ast.If):
        return any(branch and _fusable(branch[-1], var, sites) for branch in (stmt.body, stmt.orelse))
    return False


def _fuse_into(stmt, act_stmt, var, act_attr, sites):
    """Rewrite `stmt` so that it includes act_stmt; the caller drops act_stmt."""
    found = sites.assignment(stmt)
    if found:
        _, norm_attr, arg = found
        self_name = ast.Name(sites.self_name, ast.Load())
        stmt.value = ast.Call(ast.Name("fused_call", ast.Load()),
                              [ast.Attribute(self_name, norm_attr, ast.Load()),
                               ast.Attribute(self_name, act_attr, ast.Load()), arg], [])
        sites.pairs.append((norm_attr, act_attr))
        return
    # an if: push the activation into each branch (same semantics: exactly
    # one branch runs, then the activation did)
    for branch in (stmt.body, stmt.orelse):
        if branch and _fusable(branch[-1], var, sites):
            _fuse_into(branch[-1], act_stmt, var, act_attr, sites)
        else:
            branch.append(copy.deepcopy(act_stmt))


def _fuse_block(stmts, sites):
    out = []
    for stmt in stmts:
        for field in ("body", "orelse", "finalbody"):
            inner = getattr(stmt, field, None)
            if isinstance(inner, list) and inner and isinstance(inner[0], ast.stmt):
                setattr(stmt, field, _fuse_block(inner, sites))
        for handler in getattr(stmt, "handlers", ()):
            handler.body = _fuse_block(handler.body, sites)
        act = sites.activation(stmt)
        if act and out and _fusable(out[-1], act[0], sites):
            _fuse_into(out[-1], stmt, act[0], act[1], sites)
            continue
        out.append(stmt)
    return out


_cache = {}


def fused_forward(cls):
    """(forward, pairs) for a module class whose forward has norm->activation
    pairs, or (None, reason)."""
    if cls not in _cache:
        _cache[cls] = _compile_fused_forward(cls)
    return _cache[cls]


def _compile_fused_forward(cls):
    fn = cls.forward
    if not inspect.isfunction(fn):
        return None, "forward is not a plain function"
    if fn.__code__.co_freevars:  # e.g. super(): a closure cell this rewrite cannot rebuild
        return None, f"forward uses closure variables {fn.__code__.co_freevars}"
    try:
        source = textwrap.dedent(inspect.getsource(fn))
        first_line = inspect.getsourcelines(fn)[1]
        filename = inspect.getsourcefile(fn) or "<unknown>"
    except (OSError, TypeError) as exc:
        return None, f"source of forward not available ({exc})"
    tree = ast.parse(source)
    fdef = tree.body[0]
    if not isinstance(fdef, ast.FunctionDef) or fdef.decorator_list or not fdef.args.args:
        return None, "forward is decorated or has no self argument"
    sites = _Sites(fdef.args.args[0].arg)
    fdef.body = _fuse_block(fdef.body, sites)
    if not sites.pairs:
        return None, "no norm -> activation statement pair"
    # Annotations may name what only type checkers import; the defaults are
    # restored from the original function below.
    for arg in fdef.args.args + fdef.args.kwonlyargs + fdef.args.posonlyargs:
        arg.annotation = None
    for arg in (fdef.args.vararg, fdef.args.kwarg):
        if arg is not None:
            arg.annotation = None
    fdef.returns = None
    fdef.args.defaults = [ast.Constant(None) for _ in fdef.args.defaults]
    fdef.args.kw_defaults = [None if d is None else ast.Constant(None) for d in fdef.args.kw_defaults]
    # `fused_call` arrives as a closure variable of a factory, so nothing is
    # added to the model's module globals.
    module = ast.parse("def _make_forward(fused_call):\n    pass\n")
    module.body[0].body = [fdef, ast.Return(ast.Name(fdef.name, ast.Load()))]
    ast.fix_missing_locations(module)
    ast.increment_lineno(module, first_line - 1)  # tracebacks point at the model's file
    namespace = {}
    exec(compile(module, filename, "exec"), fn.__globals__, namespace)
    new = namespace["_make_forward"](fused_call)
    new.__defaults__ = fn.__defaults__
    new.__kwdefaults__ = fn.__kwdefaults__
    new.__qualname__ = fn.__qualname__
    new.__module__ = fn.__module__
    new.__doc__ = fn.__doc__
    return new, tuple(dict.fromkeys(sites.pairs))


def install(module, forward):
    """Bind the fused forward to this one instance (its class is unchanged)."""
    module.forward = types.MethodType(forward, module)
