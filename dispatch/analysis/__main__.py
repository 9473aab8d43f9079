"""`python -m dispatch.analysis report|simulate-history ...`."""

import sys

from dispatch.analysis.cli import main

sys.exit(main())
