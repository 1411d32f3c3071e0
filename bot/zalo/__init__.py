"""The Zalo citizen channels: the Zalo Bot Platform and the police's Zalo Official Account.

See ``docs/zalo.md`` for the API facts they rely on and where each comes from.
"""

from bot.zalo.bot_channel import ZaloBotChannel
from bot.zalo.oa_channel import ZaloOAChannel

__all__ = ["ZaloBotChannel", "ZaloOAChannel"]
