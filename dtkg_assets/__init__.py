"""dtkg-assets: OpenAlex works into verified, deduplicated PDFs with a DuckDB ledger.

`dtkg_assets.core` is the pure core (no Dagster imports); `dtkg_assets.defs` is the thin Dagster
layer and `dtkg_assets.definitions` its single entry point.
"""

__version__ = "0.1.0"
