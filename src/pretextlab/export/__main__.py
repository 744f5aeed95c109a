"""``python -m pretextlab.export``."""

import sys

from pretextlab.export.cli import main

sys.exit(main())
