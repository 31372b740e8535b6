"""Receptive fields: where in the input each position of a layer looks (traced exactly, else probed)."""
