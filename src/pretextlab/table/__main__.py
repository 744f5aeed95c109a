"""``python -m pretextlab.table``."""

import sys

from pretextlab.table.cli import main

sys.exit(main())
