"""Every route an aiohttp application serves, sub-applications included, for the property tests:
they compare it with the routes they explore, so that a route added later cannot be forgotten."""

from __future__ import annotations

import re

from aiohttp import web

_PARAMETER = re.compile(r"\{[^}]*\}")


def routes_of(app: web.Application) -> set[tuple[str, str]]:
    """``(method, path)`` of every route, each path parameter written ``{}`` (a static
    directory as ``<prefix>/{}``); ``HEAD``, which aiohttp adds beside each ``GET``, left out.
    A mounted sub-application's resources already carry its prefix."""
    found: set[tuple[str, str]] = set()
    for resource in app.router.resources():
        info = resource.get_info()
        if isinstance(resource, web.PrefixedSubAppResource):
            found |= routes_of(info["app"])
            continue
        if isinstance(resource, web.StaticResource):
            found.add(("GET", f"{info['prefix']}/{{}}"))
            continue
        path = _PARAMETER.sub("{}", resource.canonical)
        for route in resource:
            if route.method != "HEAD":
                found.add((route.method, path))
    return found
