"""The embedded demo: a small digits CNN and its trained weights (``digits_cnn.pt``)."""
