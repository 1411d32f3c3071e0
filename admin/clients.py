"""Who is asking, and over what: the client's address and scheme, behind trusted proxies only.

A reverse proxy puts the client's address in ``X-Forwarded-For`` and the scheme it was reached
over in ``X-Forwarded-Proto``. Anyone can send those headers, so they are believed only from the
addresses in ``TINBAO_TRUSTED_PROXIES``; from anyone else the peer address and the connection's
own scheme count.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from aiohttp import web

Network = IPv4Network | IPv6Network


@dataclass(frozen=True, slots=True)
class Clients:
    trusted: tuple[Network, ...] = ()
    force_https: bool = False

    @classmethod
    def of(cls, trusted: Iterable[Network], *, force_https: bool = False) -> Clients:
        return cls(tuple(trusted), force_https)

    def is_trusted(self, address: str | None) -> bool:
        parsed = _parse(address)
        return parsed is not None and any(parsed in network for network in self.trusted)

    def address(self, request: web.Request) -> str:
        """The client's address: the nearest ``X-Forwarded-For`` hop no trusted proxy added."""
        peer = request.remote or "unknown"
        if not self.is_trusted(peer):
            return peer
        hops = [
            hop.strip()
            for value in request.headers.getall("X-Forwarded-For", [])
            for hop in value.split(",")
        ]
        client = peer
        for hop in reversed(hops):
            parsed = _parse(hop)
            if parsed is None:  # a garbled entry: nothing left of it can be believed
                break
            client = str(parsed)
            if not any(parsed in network for network in self.trusted):
                break
        return client

    def https(self, request: web.Request) -> bool:
        """Whether the browser reached us over https (directly, or through a trusted proxy)."""
        if self.force_https or request.scheme == "https":
            return True
        if not self.is_trusted(request.remote):
            return False
        sent = request.headers.get("X-Forwarded-Proto", "")
        return sent.split(",")[0].strip().lower() == "https"


def _parse(text: str | None) -> IPv4Address | IPv6Address | None:
    if not text or len(text) > 64:
        return None
    try:
        parsed = ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(parsed, IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed
