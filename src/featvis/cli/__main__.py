"""`python -m featvis.cli`: the same as the `featvis` command."""

import sys

from featvis.cli import main

sys.exit(main())
