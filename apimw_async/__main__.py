"""``python -m apimw_async``: the same as the ``apimw-async`` command."""

from .cli import main

raise SystemExit(main())
