"""``akidb-embed healthcheck``: probe a running server, for container health checks.

Exits 0 when ``GET /ready`` (or ``/health`` with ``--live``) answers 200, 1 when the
server answers anything else or cannot be reached, 2 for a bad setting or usage. It finds
the server the way ``serve`` binds it, from the same ``[server]`` settings (the file,
``AKIDB_SERVER_*`` variables), so a container's ``HEALTHCHECK`` follows
``AKIDB_SERVER_PORT`` or a mounted config file without repeating them, and it sends the
first API key when keys are configured. Standard library only: it runs every few seconds
and must start fast.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import urllib.error
import urllib.request
from typing import Any

from akidb_embed.errors import ConfigValueError

__all__ = ["probe_url", "register"]

# What a wildcard bind address is reached through from the same host.
_LOOPBACK = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def register(subparsers: Any) -> None:
    """Add ``healthcheck [--config PATH] [--url URL] [--live] [--timeout S]``."""
    parser = subparsers.add_parser(
        "healthcheck",
        help="exit 0 if a running server is ready (for container health checks)",
        description="Probe a running `akidb-embed serve`: exit 0 when GET /ready answers "
        "200, 1 when it answers anything else or cannot be reached, 2 for a bad setting. "
        "The address, port and API key come from the same [server] settings as serve's "
        "(config file, AKIDB_SERVER_* variables).",
    )
    parser.add_argument("--config", metavar="PATH", help="TOML file with a [server] table")
    parser.add_argument("--url", help="probe this URL instead (e.g. http://127.0.0.1:8080/ready)")
    parser.add_argument(
        "--live",
        action="store_true",
        help="probe GET /health (liveness: up, even while loading) instead of /ready",
    )
    parser.add_argument(
        "--timeout", type=_positive, default=3.0, metavar="S", help="seconds (default 3)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    parser.set_defaults(func=_run)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def probe_url(host: str, port: int, path: str = "/ready") -> str:
    """The URL that reaches a server bound to *host*:*port* from the same machine.

    A wildcard address (``0.0.0.0``, ``::``) is reached through loopback; an IPv6
    address is bracketed.
    """
    host = _LOOPBACK.get(host, host)
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a host name
    return f"http://{host}:{port}{path}"


def _run(args: argparse.Namespace) -> int:
    from ._settings import ServerSettings

    path = "/health" if args.live else "/ready"
    settings = ServerSettings.load(args.config)
    if args.url is None and settings.port == 0:
        message = "is 0 (the OS picks the port when the server starts): give --url"
        raise ConfigValueError("port", message, settings.source("port"))
    url = args.url or probe_url(settings.host, settings.port, path)
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if settings.api_keys:
        request.add_header("Authorization", f"Bearer {settings.api_keys[0]}")
    # No proxy: a container's HTTP_PROXY, set for model downloads, must not route a
    # loopback probe away.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=args.timeout) as response:
            status, body = response.status, response.read(512)
    except urllib.error.HTTPError as exc:  # an answer, but not 2xx
        status, body = exc.code, exc.read(512)
    except (OSError, ValueError) as exc:  # refused, timed out, bad URL
        reason = getattr(exc, "reason", exc)
        _say(args, f"unreachable: {url}: {reason}", ok=False)
        return 1
    text = body.decode("utf-8", "replace").strip()
    ok = status == 200
    _say(args, f"{'ok' if ok else 'not ready'}: {url} answered {status} {text}", ok=ok)
    return 0 if ok else 1


def _say(args: argparse.Namespace, line: str, *, ok: bool) -> None:
    if not args.quiet:
        print(line, file=sys.stdout if ok else sys.stderr, flush=True)
