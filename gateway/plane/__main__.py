"""`python -m gateway.plane --config F --fd N`, as the supervisor starts the media plane."""

import sys

from gateway.plane.process import main

sys.exit(main())
