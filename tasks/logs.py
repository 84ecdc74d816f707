"""Logging that goes to Prefect's run logger inside a flow/task and to the console outside one."""

from __future__ import annotations

import logging


def logger() -> logging.Logger | logging.LoggerAdapter:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        log = logging.getLogger("aevb")
        if not log.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
            )
            log.addHandler(handler)
            log.setLevel(logging.INFO)
        return log
