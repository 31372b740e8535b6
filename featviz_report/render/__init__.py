"""Writing what was found: the HTML page, the JSON sidecar, notebooks, page budgets and image encoding."""
