"""`python -m dtkg_assets.cli …`: the same as `dtkg …`."""

from dtkg_assets.cli import entry

if __name__ == "__main__":  # not when a helper process (multiprocessing spawn) imports this module
    entry()
