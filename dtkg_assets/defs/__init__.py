"""Thin Dagster layer: assets, resources, sensors, schedules and checks that call the pure core."""
