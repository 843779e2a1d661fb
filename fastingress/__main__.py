"""``python -m fastingress`` is the ``fastingress`` command."""

from fastingress.cli import main

raise SystemExit(main())
