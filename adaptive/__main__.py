"""``python -m adaptive`` runs the command line."""

import sys

from adaptive.cli import main

sys.exit(main())
