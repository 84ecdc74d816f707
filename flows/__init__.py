"""Prefect flows that compose the stage tasks, the pipeline config loader and the `aevb` CLI.

Importing the package applies the process defaults every entry point shares (flows/settings.py):
no telemetry, quiet TensorFlow, a 90 s start-up timeout for Prefect's temporary server.
"""

from flows.settings import apply_env_defaults

apply_env_defaults()
