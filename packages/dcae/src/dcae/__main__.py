"""`python -m dcae` runs the `dcae` command."""

import sys

from dcae.cli import main

sys.exit(main())
