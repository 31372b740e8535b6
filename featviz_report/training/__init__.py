"""Training runs: a recorder of reports over steps, the Lightning callback, and the site's index page."""
