"""`python -m dtkg_assets.cli …`: the same as `dtkg …`."""

import sys

from dtkg_assets.cli import main

if __name__ == "__main__":  # not when a helper process (multiprocessing spawn) imports this module
    sys.exit(main())
