"""Thin Dagster layer: assets, resources, sensors, schedules and checks that call the pure core."""

import warnings

import dagster as dg

# The multi-run backfill policy is a Dagster beta parameter we rely on deliberately; its notice
# (printed at every load) tells users nothing they can act on.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
# Partitioned asset checks (AssetCheckSpec(partitions_def=...)) are a Dagster 1.13 preview we rely
# on for per-partition check results; same reasoning.
warnings.filterwarnings("ignore", category=dg.PreviewWarning)
