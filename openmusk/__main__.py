"""``python -m openmusk`` runs the command line."""
import sys

from openmusk.cli import main

sys.exit(main())
