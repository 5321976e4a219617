"""Who may talk to the review app.

* **Token.** With a token (required by ``aemia serve`` for any bind other than loopback), every request must carry
  it: the ``X-Aemia-Token`` header, the ``aemia_token`` cookie (set when the page is opened with ``?token=``, so
  images and later requests carry it) or the ``token`` query parameter. Compared in constant time.
* **DNS rebinding.** Without a token the app answers only requests whose ``Host`` is a loopback name, so a web
  page that points its own domain at 127.0.0.1 cannot read the project.
* **Cross-site writes.** Every POST must carry the ``X-Aemia-Client`` header. A page of another origin can only
  send that header after a CORS preflight, which this app never grants.
"""

from __future__ import annotations

import ipaddress
import secrets

__all__ = ["LOOPBACK_NAMES", "TOKEN_COOKIE", "is_loopback", "request_problem"]

TOKEN_COOKIE = "aemia_token"
TOKEN_HEADER = "x-aemia-token"
CLIENT_HEADER = "x-aemia-client"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):  # [::1]:8000
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def request_problem(token: str | None, method: str, headers: dict[str, str], cookies: dict[str, str],
                    query: dict[str, str]) -> tuple[int, str] | None:
    """``(status, message)`` when the request must be refused, else None (headers with lower-case names)."""
    if token is not None:
        given = headers.get(TOKEN_HEADER) or cookies.get(TOKEN_COOKIE) or query.get("token") or ""
        if not secrets.compare_digest(given.encode(), token.encode()):
            return 401, "this aemia server needs its access token: open the URL that `aemia serve` printed"
    elif not is_loopback(_host_name(headers.get("host", ""))):
        return 403, "this aemia server answers only on localhost (start it with --token to serve other hosts)"
    if method == "POST" and CLIENT_HEADER not in headers:
        return 403, "writes must come from the aemia review app (missing X-Aemia-Client header)"
    return None
