"""Where webhooks may go: public addresses only, unless the operator allows a host (WEBHOOK_ALLOWED_HOSTS).

A URL a client hands in (`callback_url`) must not make the workers call what only they can reach: loopback
services (Redis on 127.0.0.1:6379), the private network, cloud metadata (169.254.169.254,
metadata.google.internal). Two checks keep it out:

- at submission, `check_url` refuses what is non-public on its face: IP literals that are not globally
  routable (`ipaddress` decides), IPv4 written in the legacy forms resolvers still accept (`2130706433`,
  `0177.0.0.1`, `0x7f.1`, `127.1`, `0`), names with a trailing dot, one-label names (resolved through search
  domains to internal hosts: `metadata`, `redis`) and special-use or internal domains;
- at delivery, `post` resolves the name once, refuses it unless every address is allowed, and connects to
  those checked addresses itself, sending the original Host header and, for https, the name as TLS SNI and
  as the name the certificate must match. A name that answers a public address to the check and a private
  one to the connection (DNS rebinding) therefore never reaches the private one. Redirects are not followed.

The operator's allow list names hosts (exact names, whose every address is then trusted), IP addresses and
networks (CIDR), for receivers on a private network or on loopback in local testing.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from shared.errors import InvalidInput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Domains that never name a public host: special-use (RFC 6761, 6762, 8375), ICANN's private-use
# `.internal` (cloud metadata: metadata.google.internal, instance-data.ec2.internal), and the suffixes
# private networks commonly use. Their addresses are checked at delivery anyway; this refuses them early.
INTERNAL_SUFFIXES = ("localhost", "local", "internal", "home.arpa", "localdomain", "lan", "intranet", "corp")
# Metadata services reachable under a public-looking name.
METADATA_NAMES = frozenset({"metadata.goog"})
# RFC 6052's well-known NAT64 prefix: a gateway forwards 64:ff9b::a.b.c.d to the IPv4 address a.b.c.d.
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")
# A last label that resolvers would read as (part of) an IPv4 address: decimal, octal or hex.
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")


class Refused(Exception):
    """A delivery that would reach an address the policy does not allow; never retried."""


@dataclass(frozen=True)
class HostPolicy:
    """The hosts and networks an operator allows besides public addresses, or instead of them (`only`)."""

    names: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()
    only: bool = False

    @classmethod
    def parse(cls, entries: Iterable[str], *, only: bool = False) -> HostPolicy:
        """Read WEBHOOK_ALLOWED_HOSTS: each entry a host name, an IP address or a CIDR network."""
        names, networks = set(), []
        for entry in entries:
            text = entry.strip().lower().removeprefix("[").removesuffix("]")
            if not text:
                raise ValueError("an entry is empty")
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                if "/" in text or not re.fullmatch(r"[a-z0-9_.-]+", text) or text.endswith("."):
                    raise ValueError(f"{entry!r} is neither a host name, an IP address nor a CIDR network") from None
                names.add(text)
        return cls(frozenset(names), tuple(networks), only)

    def permits(self, address: IPAddress) -> bool:
        """Tell whether a connection may go to `address`: one in an allowed network, or else a public one."""
        return any(address in network for network in self.networks) or (not self.only and is_public(address))


def is_public(address: IPAddress) -> bool:
    """Tell whether `address` is globally routable unicast, including any IPv4 address an IPv6 one carries.

    IPv4-mapped (::ffff:a.b.c.d), 6to4 (2002::/16), Teredo (2001::/32) and NAT64 (64:ff9b::/96) addresses
    reach the IPv4 address they embed, so that one must be public too.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            return False
        embedded = [address.ipv4_mapped, address.sixtofour, *(address.teredo or ())]
        if address in NAT64_PREFIX:
            embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if any(inner is not None and not is_public(inner) for inner in embedded):
            return False
        if address.is_site_local:
            return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


@dataclass(frozen=True)
class Target:
    """A checked URL: its host as connected to, and whether the operator allows that name outright."""

    url: httpx.URL
    host: str
    allowed_name: bool


def check_url(url: str, *, policy: HostPolicy, field: str = "callback_url") -> Target:
    """Return `url`'s target if it may be called, or raise InvalidInput (a 400 naming `field`).

    The URL is parsed by the HTTP client that delivers it, so both read the same host.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise _refuse(field, "must be an http(s) URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise _refuse(field, "must be an http(s) URL")
    host = parsed.raw_host.decode("ascii").lower()
    if host in policy.names:
        return Target(parsed, host, allowed_name=True)
    if host.endswith(".") or "%" in host:
        raise _refuse(field, "must name its host without a trailing dot or zone")
    literal = _ip_literal(host, field=field)
    if literal is not None:
        if not policy.permits(literal):
            if policy.only:
                raise _refuse(field, "is not on an allowed host (WEBHOOK_ALLOWED_HOSTS)")
            raise _refuse(field, "must be a public address (not loopback, private, link-local or reserved)")
        return Target(parsed, host, allowed_name=False)
    if policy.only and not policy.networks:
        raise _refuse(field, "is not on an allowed host (WEBHOOK_ALLOWED_HOSTS)")
    internal = host in INTERNAL_SUFFIXES or host.endswith(tuple("." + suffix for suffix in INTERNAL_SUFFIXES))
    if "." not in host or internal or host in METADATA_NAMES:
        raise _refuse(field, "must name a public host (not a local, internal or metadata name)")
    return Target(parsed, host, allowed_name=False)


def _ip_literal(host: str, *, field: str) -> IPAddress | None:
    """Return the address a host names literally; refuse IPv4 in any form but four decimal numbers."""
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise _refuse(field, "must be an http(s) URL") from None
    if not _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
        return None
    try:
        return ipaddress.IPv4Address(host)  # only the canonical dotted-quad form parses
    except ValueError:
        raise _refuse(field, "must write an IPv4 address as four decimal numbers (a.b.c.d)") from None


def _refuse(field: str, rule: str) -> InvalidInput:
    return InvalidInput(f"{field} {rule}", details={"field": field})


def resolve(host: str, port: int) -> list[IPAddress]:
    """Return the addresses `host` resolves to, in the resolver's order, each once."""
    addresses: list[IPAddress] = []
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def post(
    url: str,
    *,
    content: bytes,
    headers: Mapping[str, str],
    timeout: float,
    policy: HostPolicy,
    verify: Any = True,
) -> httpx.Response:
    """POST to `url` on an address checked against `policy`; the response as is (redirects not followed).

    Raises Refused when the URL or any address its host resolves to is not allowed, httpx.HTTPError when
    no checked address answers, OSError when the name does not resolve.
    """
    try:
        target = check_url(url, policy=policy)
    except InvalidInput as exc:
        raise Refused(exc.message) from None
    port = target.url.port or (443 if target.url.scheme == "https" else 80)
    addresses = resolve(target.host, port)
    if not target.allowed_name:
        refused = [address for address in addresses if not policy.permits(address)]
        if refused:
            raise Refused(f"{target.host} resolves to a non-public address ({refused[0]})")
    # The Host header as the client would send it for the name (with the port when it is not the default).
    host_header = httpx.Request("POST", target.url).headers["Host"]
    last_error: httpx.TransportError | None = None
    with httpx.Client(timeout=timeout, verify=verify, follow_redirects=False, trust_env=False) as client:
        for address in addresses:
            try:
                return client.post(
                    target.url.copy_with(host=str(address)),
                    content=content,
                    headers={**headers, "Host": host_header},
                    # TLS: SNI and certificate verification use the name, not the address connected to.
                    extensions={"sni_hostname": target.host},
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last_error = exc  # nothing was sent: try the next checked address
    if last_error is None:
        raise httpx.ConnectError(f"{target.host} resolves to no address")
    raise last_error
