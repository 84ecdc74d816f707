"""Logging that goes to Prefect's run logger inside a flow/task and to the console outside one."""

from __future__ import annotations

import logging


def logger() -> logging.Logger | logging.LoggerAdapter:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        # "prefect.aevb": Prefect's console handler prints it, once, in Prefect's format (a handler
        # of our own would print every line twice and pin whatever sys.stderr was at first use).
        from prefect.logging import get_logger

        return get_logger("aevb")
