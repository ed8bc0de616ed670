"""``python -m slimops ...``: the same as the ``slimops`` command."""

from slimops.cli import main

raise SystemExit(main())
