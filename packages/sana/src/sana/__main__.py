"""`python -m sana ...` is the `sana` command."""

from sana.cli import main

raise SystemExit(main())
