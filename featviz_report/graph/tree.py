"""The module tree for the page's navigation: ``named_modules()`` nested, with output shapes and links."""

from __future__ import annotations

from torch import nn

from ..report_data import TreeNode

__all__ = ["module_tree"]


def module_tree(model: nn.Module, shapes: dict[str, tuple[int, ...]], slugs: dict[str, str]) -> tuple[TreeNode, ...]:
    """The children of ``model`` as nodes; ``shapes`` from one forward pass, ``slugs`` of captured layers.

    Modules that never ran and hold no captured layer are left out, so the tree shows what happened.
    """

    def build(module: nn.Module, prefix: str) -> tuple[TreeNode, ...]:
        nodes = []
        for child_name, child in module.named_children():
            name = f"{prefix}{child_name}"
            children = build(child, f"{name}.")
            if name not in shapes and not children and name not in slugs:
                continue
            nodes.append(TreeNode(name, child_name, type(child).__name__, shapes.get(name), slugs.get(name), children))
        return tuple(nodes)

    return build(model, "")
