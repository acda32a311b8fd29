"""``python -m dreamdistill ...`` runs the command-line tool (same as ``dreamdistill ...``)."""

import sys

from dreamdistill.cli import main

sys.exit(main())
