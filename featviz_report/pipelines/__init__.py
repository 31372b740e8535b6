"""The pipelines: the core every build shares, and the report, the comparison and the scan."""
