"""`python -m dtkg_assets.cli …`: the same as `dtkg …`."""

import sys

from dtkg_assets.cli import main

sys.exit(main())
