"""Exceptions the ONNX front end raises (both are ValueError/RuntimeError
subclasses, so callers catching the builtins still catch them)."""


class InvalidModelError(ValueError):
    """The model cannot be loaded: not ONNX, truncated, or structurally broken
    (undefined tensor, cycle, duplicate output, op with no implementation)."""


class NodeExecutionError(RuntimeError):
    """An op failed while running; the message names the node and its inputs."""
