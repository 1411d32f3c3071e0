"""Which reports sit in a queue: one SQL condition, shared by the chat and the web panel.

A report's queue is the one it was transferred to (``reports.queue_key``), else its unit's own
queue, else the provincial duty queue. The duty queue is a queue like any other: with no queue
file at all (the README's default set-up) it holds every report.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, true

from config.queues import Queue, QueueMap
from storage.models import Report


def in_queue(queues: QueueMap, queue: Queue) -> ColumnElement[bool]:
    """Reports whose effective queue is ``queue`` (a transfer's queue, else the unit's)."""
    if queue.is_duty:
        queued = sorted({u for q in queues.queues for u in q.units})
        # Units without a queue of their own, and reports with no unit, fall through to duty.
        unit_cond: ColumnElement[bool] = (
            Report.unit_code.is_(None) | Report.unit_code.not_in(queued) if queued else true()
        )
        return (Report.queue_key.is_(None) & unit_cond) | (Report.queue_key == queue.key)
    return (Report.queue_key.is_(None) & Report.unit_code.in_(sorted(queue.units))) | (
        Report.queue_key == queue.key
    )
