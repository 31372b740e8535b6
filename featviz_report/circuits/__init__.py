"""Circuits: what each captured channel is built from, among the channels of the captured layers that feed it.

``trace.py`` runs the model once over a few samples and follows, operation by operation, how every tensor's
channels depend on the channels of the captured layers before it (:mod:`.routes`, with the operations'
rules in :mod:`.rules`); ``strength.py`` turns that into each channel's strongest inputs, by expanded weights
where the path between is linear and by attribution (the mean gradient) where it is not; ``stage.py`` is the
stage the pipelines call, and ``patterns.py`` draws the spatial pattern of each input's weight.
"""
