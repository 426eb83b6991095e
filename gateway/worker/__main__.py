"""`python -m gateway.worker --config F --fd N`, as the supervisor starts a worker."""

import sys

from gateway.worker.process import main

sys.exit(main())
