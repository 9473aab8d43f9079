"""`python -m dispatch.fleet`: the fleet twin's command on its own."""

import sys

from dispatch.fleet.cli import main

sys.exit(main())
