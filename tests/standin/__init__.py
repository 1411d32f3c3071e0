"""A stand-in Telegram Bot API server and builders for realistic updates, for tests."""

from tests.standin.factory import DEFAULT_GROUP_ID, Group, UpdateFactory, User, make_jpeg
from tests.standin.server import (
    DEFAULT_TOKEN,
    SENDING_METHODS,
    USE_REGISTERED_SECRET,
    ApiCall,
    ApiError,
    BotAPIStandIn,
    FloodLimits,
    StandInStats,
    StoredFile,
    UploadedFile,
    WebhookDelivery,
    bad_request,
)

__all__ = [
    "DEFAULT_GROUP_ID",
    "DEFAULT_TOKEN",
    "SENDING_METHODS",
    "USE_REGISTERED_SECRET",
    "ApiCall",
    "ApiError",
    "BotAPIStandIn",
    "FloodLimits",
    "Group",
    "StandInStats",
    "StoredFile",
    "UpdateFactory",
    "UploadedFile",
    "User",
    "WebhookDelivery",
    "bad_request",
    "make_jpeg",
]
