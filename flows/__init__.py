"""Prefect flows that compose the stage tasks, the pipeline config loader and the `aevb` CLI."""
