"""Frontends: turn a user's model into a GraphModule with shapes in ``node.meta``."""
from .fx import normalize_inputs, propagate_shapes, trace

__all__ = ["trace", "propagate_shapes", "normalize_inputs"]
