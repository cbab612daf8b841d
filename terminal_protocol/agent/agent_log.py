"""The agent's log for the shop's IT person: JSON lines in the state directory, never on the
cashier's screen (which speaks French), bounded in size. No card UID goes in: messages name
request ids, amounts and masked cards only."""

from __future__ import annotations

import json
import logging
import logging.handlers
from pathlib import Path

LOG_FILE_NAME = "agent.log"
LOG_FILE_MAX_BYTES = 5 * 1024 * 1024
LOG_FILES_KEPT = 3          # agent.log and two older ones: at most 20 MiB on the shop's PC


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"at": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname,
                "logger": record.name, "message": record.getMessage()}
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def log_to_state_dir(state_dir: Path) -> Path:
    """Send the agent's log records to state_dir/agent.log (and nowhere else); returns the path."""
    path = state_dir / LOG_FILE_NAME
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=LOG_FILE_MAX_BYTES, backupCount=LOG_FILES_KEPT - 1, encoding="utf-8")
    handler.setFormatter(JsonLines())
    root = logging.getLogger("hdfpay")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
    return path
