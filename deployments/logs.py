"""percept's own log records in a replica go to that replica's Serve log file (under the
``logs_dir`` `percept run` sets: ``<state_dir>/logs``), beside Serve's lines, not to the console."""

from __future__ import annotations

import logging


class _ToServeLog(logging.Handler):
    """Hands each record to the handlers Serve installed on its own logger in this replica."""

    def emit(self, record: logging.LogRecord) -> None:
        for handler in logging.getLogger("ray.serve").handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


def route_percept_logs(level: int = logging.INFO) -> None:
    """Call once in a replica's constructor."""
    logger = logging.getLogger("percept")
    if not any(isinstance(h, _ToServeLog) for h in logger.handlers):
        logger.addHandler(_ToServeLog())
    logger.setLevel(level)
    logger.propagate = False
