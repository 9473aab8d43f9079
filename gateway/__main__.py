"""`python -m gateway` is `stationgw`."""

import sys

from gateway.ops.cli import main

sys.exit(main())
