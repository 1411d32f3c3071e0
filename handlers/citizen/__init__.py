"""The citizen side: the conversation (tip, accident, status, relay) and report submission.

``flow`` is the entry point; each flow module holds its steps (:mod:`.tip`, :mod:`.accident`,
:mod:`.status`, :mod:`.relay`, :mod:`.menu`); :mod:`.submit` stores a report without a
conversation (the web form); :mod:`.answers` reads typed answers.
"""

from handlers.citizen.base import (
    CitizenSettings,
    DuplicateUpdate,
    Locator,
    MediaFetcher,
    Prepared,
    State,
)
from handlers.citizen.draft import DESCRIPTION_MAX, DESCRIPTION_MIN, Draft, DraftInput
from handlers.citizen.flow import CitizenFlow
from handlers.citizen.submit import RateLimited, Submitted, submit_report

__all__ = [
    "DESCRIPTION_MAX",
    "DESCRIPTION_MIN",
    "CitizenFlow",
    "CitizenSettings",
    "Draft",
    "DraftInput",
    "DuplicateUpdate",
    "Locator",
    "MediaFetcher",
    "Prepared",
    "RateLimited",
    "State",
    "Submitted",
    "submit_report",
]
