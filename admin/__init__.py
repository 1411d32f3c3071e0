"""The web side of the service: health today, the officers' and commanders' panel next."""

from admin.web import SERVICE_KEY, build_web_app

__all__ = ["SERVICE_KEY", "build_web_app"]
