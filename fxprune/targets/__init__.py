"""Targets: what :func:`fxprune.prune` returns — a GraphModule (graph) or the user's own class (module)."""
