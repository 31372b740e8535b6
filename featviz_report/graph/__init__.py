"""The model's graph: the calls a forward pass made, their layout, and the module tree."""
