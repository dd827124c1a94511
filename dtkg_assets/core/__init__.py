"""Pure core: settings-driven HTTP, streaming, store, ledger, reconciler. No Dagster imports."""
