"""One JSON object per log line (CloudWatch Logs, then any SIEM).

Callers pass plain fields; nothing secret is ever handed to the logger (the
service logs audit records, which hold accessors and hashes only).
"""

import json
import logging
import sys
from datetime import datetime, timezone

LOGGER_NAME = "secret_zero_broker"


class JsonFormatter(logging.Formatter):
    def format(self, record):
        line = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "event": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info and record.exc_info[0] is not None:
            # The type only: exception text may quote request data.
            line["exception"] = record.exc_info[0].__name__
        return json.dumps(line, default=str, separators=(",", ":"))


def get_logger(level="INFO"):
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)
    return logger


def log(logger, level, event, **fields):
    logger.log(level, event, extra={"fields": fields})
