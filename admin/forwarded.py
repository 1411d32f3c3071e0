"""The client's address behind a reverse proxy, trusted only from the proxies configured.

Behind nginx every request comes from the proxy's address, so a per-address limit would count
everyone together. The proxy sets ``X-Forwarded-For`` (replacing, not appending: see
``deploy/nginx.conf``); it is believed only when the peer is in ``TINBAO_TRUSTED_PROXIES``.
The address is used for the panel's sign-in limits, under a keyed hash, and never logged.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Sequence[str]) -> list[Network]:
    """``10.0.0.0/8``, ``172.18.0.2`` ... as networks; ``ValueError`` names a bad one."""
    networks: list[Network] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IP address or network") from exc
    return networks


def client_address(request: web.Request, trusted: Sequence[Network]) -> str:
    """The peer, or the last hop of ``X-Forwarded-For`` when the peer is a trusted proxy."""
    peer = request.remote or "unknown"
    if not trusted:
        return peer
    try:
        peer_ip = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if not any(peer_ip in network for network in trusted):
        return peer
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    if not hops:
        return peer
    try:
        return str(ipaddress.ip_address(hops[-1]))
    except ValueError:
        return peer
