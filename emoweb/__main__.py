"""`python -m emoweb`."""
import sys

from emoweb.cli import main

sys.exit(main())
