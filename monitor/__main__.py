"""``python -m monitor`` runs the node telemetry agent."""

import sys

from monitor.cli import main

sys.exit(main())
