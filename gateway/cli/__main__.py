"""`python -m gateway.cli ...`, the same as the `sipedge` command."""

import sys

from gateway.cli import main

sys.exit(main())
