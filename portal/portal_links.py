"""What the portal's pages need of the server around them: the public address that e-mailed
links point to (never the request's Host header, which anyone can forge to steer a reset link
to their own site), and a nudge to the mail sender when a transaction queued a mail."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from aiohttp import web


@dataclass
class PortalLinks:
    public_url: str = ""                     # set once the listener's address is known
    mail_queued: Callable[[], None] = field(default=lambda: None)


LINKS = web.AppKey("portal_links", PortalLinks)
