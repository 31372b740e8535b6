"""Running the model with hooks, and what a pass collects: per-layer records, statistics, filters, Grad-CAM."""
