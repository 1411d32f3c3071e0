"""The delivery of the outbox (``docs/delivery.md``).

- :mod:`~bot.delivery.leases`: claim, save, finish, release, park an outbox row (shared with the
  citizen messenger);
- :mod:`~bot.delivery.pacing`: Telegram's flood limits as budgets;
- :mod:`~bot.delivery.folding`: a chat's next sends, its tip backlog folded into digests;
- :mod:`~bot.delivery.landing`: one sender per officers' chat, and a send that timed out found
  in the chat (adopted) instead of posted twice;
- :mod:`~bot.delivery.officers`: the Telegram sender for officers' chats;
- :mod:`~bot.delivery.timers`: the timer worker (escalation, reminders);
- :mod:`~bot.delivery.worker`: the officers' delivery worker that ties them together;
- :mod:`~bot.delivery.citizens`: messages to tipsters through the channel their route names.
"""

from bot.delivery.citizens import CitizenMessenger
from bot.delivery.leases import Claim, Leases
from bot.delivery.officers import SENT_KINDS, OfficerSender, is_chat_gone
from bot.delivery.pacing import FloodLimits, Pacer
from bot.delivery.timers import TimerHandler, TimerWorker
from bot.delivery.worker import (
    DIGEST_PRIORITY,
    EMERGENCY_PRIORITY,
    NO_DUTY_ERROR,
    DeliveryStats,
    DeliveryWorker,
)
from handlers.outbox import TIMER_PREFIX, Kind

KIND_CARD = Kind.REPORT_CARD.value
KIND_DIGEST = Kind.DIGEST.value
KIND_REMINDER = Kind.REMINDER.value
KIND_ALERT = Kind.ALERT.value

__all__ = [
    "DIGEST_PRIORITY",
    "EMERGENCY_PRIORITY",
    "KIND_ALERT",
    "KIND_CARD",
    "KIND_DIGEST",
    "KIND_REMINDER",
    "NO_DUTY_ERROR",
    "SENT_KINDS",
    "TIMER_PREFIX",
    "CitizenMessenger",
    "Claim",
    "DeliveryStats",
    "DeliveryWorker",
    "FloodLimits",
    "Leases",
    "OfficerSender",
    "Pacer",
    "TimerHandler",
    "TimerWorker",
    "is_chat_gone",
]
