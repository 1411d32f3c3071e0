"""Handlers of the tinbao bot and their Telegram-independent helpers."""
