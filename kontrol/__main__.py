"""`python -m kontrol` = the `kontrol` command."""

import sys

from kontrol.cli import main

sys.exit(main())
