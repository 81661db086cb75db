"""The gateway's status page (/ui): a pure-ASGI app over an injected status source (see app.py)."""

from gateway.ui.app import StatusPage, StatusSource, UISettings, status_page

__all__ = ["StatusPage", "StatusSource", "UISettings", "status_page"]
