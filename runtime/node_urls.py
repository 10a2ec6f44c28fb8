"""Runtime node URLs: the one check every way a node comes in goes through (OLLAMA_URL and
OLLAMA_URLS at start, `/api/admin/nodes`, the store's list of nodes added at run time), the
label a node is shown by, and a URL with its credentials taken out.

A node URL is `http(s)://host[:port]` with at most a trailing `/` and `#vram=GB` after it: no
credentials, no path, no query, no control characters or spaces, a host that is a DNS name or an
IP address written plainly, a port from 1 to 65535. Link-local addresses (169.254.0.0/16,
fe80::/10) and cloud metadata services are refused unless NODE_ALLOW_LINK_LOCAL says otherwise,
whether written in the URL or, when the node is opened, what its name resolves to.

Nodes are shown to everyone by a label (`node_label`: the runtime's kind and a digest of its URL,
the same in every process and in the event counters); only admins see URLs, and never with
credentials (`without_credentials`, `scrub_urls`).
"""
from __future__ import annotations

import hashlib
import ipaddress
import math
import re
import socket
from urllib.parse import urlsplit, urlunsplit

from telemetry.logs import escape_controls

MAX_URL_CHARS = 2048
MAX_HOST_CHARS = 253
MAX_SHOWN_CHARS = 120
METADATA_HOSTS = frozenset({"metadata", "metadata.google.internal", "metadata.goog", "instance-data",
                            "instance-data.ec2.internal", "metadata.azure.internal"})
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",      # AWS, GCP, Azure, OCI, DigitalOcean, OpenStack
    "169.254.170.2",        # AWS ECS task metadata
    "fd00:ec2::254",        # AWS over IPv6
    "100.100.100.200",      # Alibaba Cloud
))
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
_NUMERIC_LOOKING = re.compile(r"(0x[0-9a-f]*|[0-9]+)")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]*@")


class NodeUrlError(ValueError):
    """A node URL that is refused; the message says why, in words an operator can act on."""


def shown(text: str) -> str:
    """A value a client sent, fit to quote in an error message or a log line: control
    characters escaped, cut to MAX_SHOWN_CHARS."""
    cut = text[:MAX_SHOWN_CHARS] + ("..." if len(text) > MAX_SHOWN_CHARS else "")
    return escape_controls(cut)


def validate_node_url(url: object, *, allow_link_local: bool = False) -> str:
    """`url` when it is an acceptable node URL, else NodeUrlError saying why. Looks nothing up:
    see `check_resolved` for what the host's name resolves to."""
    if not isinstance(url, str):
        raise NodeUrlError("a node URL must be a string")
    if not url:
        raise NodeUrlError("a node URL must not be empty")
    if len(url) > MAX_URL_CHARS:
        raise NodeUrlError(f"a node URL has at most {MAX_URL_CHARS} characters (this one has {len(url)})")
    if any(_is_control(c) or c.isspace() for c in url):
        raise NodeUrlError(f"{shown(url)}: a node URL must not hold control characters or spaces")
    if "\\" in url:
        raise NodeUrlError(f"{shown(url)}: a node URL must not hold a backslash")
    base, _, fragment = url.partition("#")
    scheme, sep, rest = base.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise NodeUrlError(f"{shown(url)}: a node URL starts with http:// or https://")
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    if "@" in netloc:
        raise NodeUrlError(f"{shown(_strip_userinfo(url))}: a node URL must not hold credentials (user:password@); "
                           "put the runtime where it needs none, or behind a proxy that adds them")
    if "?" in base:
        raise NodeUrlError(f"{shown(url)}: a node URL must not have a query (?...)")
    try:
        parts = urlsplit(base)
    except ValueError:
        raise NodeUrlError(f"{shown(url)}: not a valid URL (an IPv6 address goes in [brackets])") from None
    try:
        port = parts.port
    except ValueError:
        raise NodeUrlError(f"{shown(url)}: the port must be a number from 1 to 65535") from None
    if parts.path not in ("", "/"):
        raise NodeUrlError(f"{shown(url)}: a node URL is the runtime's base URL, with no path "
                           f"({shown(parts.path)})")
    host = parts.hostname or ""
    if not host:
        raise NodeUrlError(f"{shown(url)}: a node URL needs a host (http://host:11434)")
    if port == 0 or netloc.endswith(":"):
        raise NodeUrlError(f"{shown(url)}: the port must be a number from 1 to 65535")
    _check_host(host, url, bracketed="[" in netloc)
    if fragment:
        try:
            split_node_url(url)
        except ValueError as exc:
            raise NodeUrlError(str(exc)) from None
    if not allow_link_local:
        reason = refused_host(host)
        if reason:
            raise NodeUrlError(f"{shown(url)}: {host} is {reason}; such nodes are refused unless "
                               "NODE_ALLOW_LINK_LOCAL=true")
    return url


def check_resolved(url: str, *, allow_link_local: bool = False) -> None:
    """NodeUrlError when the host's name resolves to a link-local or metadata address (a name
    that does not resolve now passes: the node may come up later)."""
    if allow_link_local:
        return
    parts = urlsplit(url.partition("#")[0])
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return                                    # an address: validate_node_url judged it
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, parts.port or 80, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return
    for info in infos:
        try:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        except ValueError:
            continue
        reason = _refused_address(address)
        if reason:
            raise NodeUrlError(f"{shown(url)}: {host} resolves to {address}, {reason}; such nodes are refused "
                               "unless NODE_ALLOW_LINK_LOCAL=true")


def refused_host(host: str) -> str | None:
    """Why a node may not be at `host` (a name or an address as written), or None."""
    name = host.rstrip(".").lower()
    if name in METADATA_HOSTS:
        return "a cloud metadata service"
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return None
    return _refused_address(address)


def _refused_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.version == 6:
        address = ipaddress.IPv6Address(int(address))        # without a %zone
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_link_local:
        return "a link-local address"
    return None


def _check_host(host: str, url: str, bracketed: bool) -> None:
    if bracketed:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise NodeUrlError(f"{shown(url)}: [{shown(host)}] is not an IPv6 address") from None
        return
    if len(host) > MAX_HOST_CHARS:
        raise NodeUrlError(f"a node URL's host has at most {MAX_HOST_CHARS} characters (this one has {len(host)})")
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if _NUMERIC_LOOKING.fullmatch(labels[-1]):
        # digits where a name ends: only a plain dotted IPv4 address (no 2852039166, 0x..., 010.0.0.1)
        try:
            ipaddress.IPv4Address(".".join(labels))
        except ValueError:
            raise NodeUrlError(f"{shown(url)}: {shown(host)} is neither a host name nor a plain IPv4 address") from None
        return
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise NodeUrlError(f"{shown(url)}: {shown(host)} is not a valid host name "
                           "(letters, digits, '-' and '_', dot-separated; internationalised names in their xn-- form)")


def _is_control(c: str) -> bool:
    code = ord(c)
    return code < 0x20 or 0x7f <= code <= 0x9f or c in "\u2028\u2029"


def without_credentials(url: str) -> str:
    """`url` with any user:password@ taken out."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _strip_userinfo(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _strip_userinfo(text: str) -> str:
    return _USERINFO.sub(r"\1", text)


def scrub_urls(text: str | None) -> str | None:
    """Text (an error, say) with the credentials of any URL in it taken out."""
    return None if text is None else _strip_userinfo(text)


def node_label(kind: str, url: str) -> str:
    """How a node is named where its URL is not shown: its runtime's kind and a digest of its URL
    (the same in every process, and for the node's URL with or without `#vram=`, trailing `/`
    or credentials), e.g. `ollama-3fa2c1d0`."""
    base = without_credentials(url.partition("#")[0]).rstrip("/")
    return f"{kind or 'node'}-{hashlib.sha256(base.encode('utf-8', 'replace')).hexdigest()[:8]}"


def split_node_url(node_url: str) -> tuple[str, float | None]:
    """`http://host:11434#vram=24` -> (`http://host:11434`, 24.0). Raises ValueError on a bad fragment."""
    url, _, fragment = node_url.partition("#")
    if not fragment:
        return url.rstrip("/"), None
    key, _, value = fragment.partition("=")
    if key != "vram":
        raise ValueError(f"{node_url}: the only thing a node URL may say after # is vram=GB")
    try:
        gb = float(value)
    except ValueError:
        raise ValueError(f"{node_url}: vram must be a number of GB") from None
    if not math.isfinite(gb) or gb <= 0:
        raise ValueError(f"{node_url}: vram must be a positive number of GB")
    return url.rstrip("/"), gb
