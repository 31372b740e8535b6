"""``python -m featviz_report``: the same as the ``featviz-report`` command."""

from .cli import main

raise SystemExit(main())
