"""`python -m server` is the same as the `stories` console script."""

from server.cli import main

raise SystemExit(main())
