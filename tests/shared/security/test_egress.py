"""Webhooks reach public addresses only: refused on their face at submission, and at delivery by what the name
resolves to, on the address that was checked (no DNS rebinding), without following redirects."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from shared.errors import ConfigError
from shared.errors import InvalidInput
from shared.jobs import webhooks
from shared.security import egress
from tests.conftest import make_test_settings
from tests.support.webhook_receiver import FakeDNS
from tests.support.webhook_receiver import make_certificates
from tests.support.webhook_receiver import receiver

PUBLIC = egress.HostPolicy()

HOSTILE_URLS = [
    # loopback, private, link-local (cloud metadata), CGNAT, multicast, reserved, unspecified, broadcast
    "http://127.0.0.1:6379/",
    "http://127.255.255.254/",
    "http://10.0.0.5/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/",
    "http://100.100.100.200/latest/meta-data/",
    "http://198.18.0.1/",
    "http://224.0.0.1/",
    "http://239.255.255.250:1900/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "http://0.0.0.0:8000/",
    # IPv4 written the way resolvers still read it
    "http://2130706433/",
    "http://0/",
    "http://0177.0.0.1/",
    "http://0x7f.1/",
    "http://0x7f000001/",
    "http://127.1/",
    "http://127.0.1/",
    "http://010.0.0.5/",
    "http://1.2.3.4.5/",
    # IPv6: loopback, unspecified, link-local, unique-local, site-local, multicast, and IPv4 inside IPv6
    "http://[::1]/",
    "http://[::]/",
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://[fd12:3456::1]/",
    "http://[fec0::1]/",
    "http://[ff02::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://[::127.0.0.1]/",
    "http://[2002:a00:1::]/",  # 6to4 of 10.0.0.1
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",  # Teredo
    "http://[64:ff9b::a00:5]/",  # NAT64 of 10.0.0.5
    # names: local, internal, metadata, one label (search domains), trailing dots
    "http://localhost/",
    "http://localhost:6379/",
    "http://LOCALHOST/",
    "http://localhost./",
    "http://app.localhost/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://metadata.google.internal./",
    "http://instance-data.ec2.internal/",
    "http://metadata/",
    "http://instance-data/",
    "http://metadata.goog/",
    "http://redis:6379/",
    "http://printer.local/",
    "http://kubernetes.default.svc.cluster.local/",
    "http://router.home.arpa/",
    "http://home.arpa/",
    "http://hooks.example.com./",
    # a host hidden behind user info is still the host
    "http://hooks.example.com@127.0.0.1/",
    "http://user:pw@10.0.0.5/",
    # not http(s), or no host
    "ftp://hooks.example.com/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_INFO",
    "not a url",
    "http:///path",
    "https://",
]

PUBLIC_URLS = [
    "https://hooks.example.com/x?token=abc",
    "http://8.8.8.8/",
    "https://[2001:4860:4860::8888]/hook",
    "https://user:pw@hooks.example.com:8443/path",
    "https://bücher.example/hook",
    "http://192.0.2.1.nip.io/",  # a name; what it resolves to is checked at delivery
]


@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_a_non_public_url_is_refused_at_submission(url: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        egress.check_url(url, policy=PUBLIC)
    assert refused.value.details == {"field": "callback_url"}


@pytest.mark.parametrize("url", PUBLIC_URLS)
def test_a_public_url_passes(url: str) -> None:
    assert egress.check_url(url, policy=PUBLIC).allowed_name is False


@pytest.mark.parametrize(
    ("entries", "url"),
    [
        (["127.0.0.1"], "http://127.0.0.1:9/hook"),
        (["127.0.0.0/8"], "http://127.0.0.2/"),
        (["10.0.0.0/8"], "http://10.1.2.3/"),
        (["::1"], "http://[::1]:8000/"),
        (["[::1]"], "http://[::1]:8000/"),
        (["localhost"], "http://localhost:8000/hook"),
        (["Hooks.Internal"], "https://hooks.internal/x"),
        (["redis"], "http://redis:8080/"),
    ],
)
def test_an_allowed_host_passes(entries: list[str], url: str) -> None:
    egress.check_url(url, policy=egress.HostPolicy.parse(entries))


def test_allowing_one_host_allows_no_other() -> None:
    policy = egress.HostPolicy.parse(["127.0.0.1", "hooks.internal"])
    for url in ("http://127.0.0.2/", "http://localhost/", "http://10.0.0.5/", "http://other.internal/"):
        with pytest.raises(InvalidInput):
            egress.check_url(url, policy=policy)


def test_only_the_allowed_hosts_when_asked() -> None:
    policy = egress.HostPolicy.parse(["hooks.example.com"], only=True)
    egress.check_url("https://hooks.example.com/x", policy=policy)
    for url in ("https://other.example.com/", "http://8.8.8.8/"):
        with pytest.raises(InvalidInput, match="allowed host"):
            egress.check_url(url, policy=policy)


@pytest.mark.parametrize("entry", ["", "not a host!", "10.0.0.0/33", "hooks.example.com.", "http://x/"])
def test_a_bad_allowed_host_is_a_configuration_error(entry: str) -> None:
    with pytest.raises(ConfigError, match="WEBHOOK_ALLOWED_HOSTS"):
        make_test_settings("sqlite://", webhook_allowed_hosts=[entry])


def test_an_alert_webhook_on_a_private_address_is_a_configuration_error() -> None:
    for url in ("http://169.254.169.254/", "http://localhost:9000/hook", "http://2130706433/"):
        with pytest.raises(ConfigError, match="ALERT_WEBHOOK_URL"):
            make_test_settings("sqlite://", alert_webhook_url=url)
    make_test_settings("sqlite://", alert_webhook_url="http://localhost:9000/", webhook_allowed_hosts=["localhost"])


# --- Delivery ------------------------------------------------------------------------------------------------


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    fake = FakeDNS()
    monkeypatch.setattr(socket, "getaddrinfo", fake.getaddrinfo)
    return fake


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    """Every address a connection is opened to; any but loopback is refused without leaving the machine."""
    opened: list[tuple[str, int]] = []
    real = socket.create_connection

    def create_connection(address, *args, **kwargs):
        opened.append((address[0], address[1]))
        if not address[0].startswith("127."):
            raise ConnectionRefusedError(111, "Connection refused")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    yield opened


def _post(url: str, policy: egress.HostPolicy = PUBLIC, **kwargs) -> httpx.Response:
    return egress.post(url, content=b"{}", headers={"Content-Type": "application/json"}, timeout=5, policy=policy,
                       **kwargs)  # fmt: skip


def test_a_name_that_resolves_to_a_private_address_is_not_contacted(dns: FakeDNS, connections) -> None:
    with receiver() as hooks:
        dns.answer("hooks.example.com", ["127.0.0.1"])
        with pytest.raises(egress.Refused, match="non-public"):
            _post(f"http://hooks.example.com:{hooks.port}/hook")
        assert hooks.requests == []
        assert connections == []


def test_every_address_a_name_resolves_to_is_checked(dns: FakeDNS, connections) -> None:
    dns.answer("hooks.example.com", ["93.184.215.14", "10.0.0.5"])
    with pytest.raises(egress.Refused):
        _post("http://hooks.example.com/hook")
    assert connections == []


def test_rebinding_cannot_reach_the_private_address(dns: FakeDNS, connections) -> None:
    with receiver() as hooks:
        # Public to the check, loopback (the receiver) to any later lookup.
        dns.answer("hooks.example.com", ["93.184.215.14"], ["127.0.0.1"])
        with pytest.raises(httpx.ConnectError):
            _post(f"http://hooks.example.com:{hooks.port}/hook")
        assert dns.lookups["hooks.example.com"] == 1
        assert connections == [("93.184.215.14", hooks.port)]
        assert hooks.requests == []


def test_the_checked_address_is_called_with_the_name_as_host(dns: FakeDNS, connections) -> None:
    policy = egress.HostPolicy.parse(["127.0.0.0/8"])
    with receiver() as hooks:
        dns.answer("hooks.example.com", ["10.9.9.9"], ["127.0.0.1"])
        with pytest.raises(egress.Refused):  # 10/8 is not allowed: the network list is exact
            _post(f"http://hooks.example.com:{hooks.port}/hook", policy)
        dns.answer("hooks.example.com", ["127.0.0.1"])
        response = _post(f"http://hooks.example.com:{hooks.port}/hook?token=t", policy)
    assert response.status_code == 204
    [request] = hooks.requests
    assert (request.path, request.headers["Host"]) == ("/hook?token=t", f"hooks.example.com:{hooks.port}")


def test_an_allowed_name_may_resolve_anywhere(dns: FakeDNS, connections) -> None:
    with receiver() as hooks:
        dns.answer("hooks.internal", ["127.0.0.1"])
        assert _post(f"http://hooks.internal:{hooks.port}/", egress.HostPolicy.parse(["hooks.internal"])).is_success


def test_a_refused_literal_is_refused_at_delivery_too(connections) -> None:
    with receiver() as hooks:
        with pytest.raises(egress.Refused):
            _post(f"http://127.0.0.1:{hooks.port}/hook")
        assert hooks.requests == []


def test_redirects_are_not_followed(dns: FakeDNS, connections) -> None:
    policy = egress.HostPolicy.parse(["127.0.0.1"])
    with receiver() as hooks:
        hooks.answers["/hook"] = (302, {"Location": f"http://127.0.0.1:{hooks.port}/elsewhere"})
        outcome = webhooks.deliver(f"http://127.0.0.1:{hooks.port}/hook", {"a": 1}, secret=None, timeout_s=5,
                                   policy=policy)  # fmt: skip
    assert (outcome.status_code, outcome.error, outcome.delivered) == (302, "HTTP 302", False)
    assert [request.path for request in hooks.requests] == ["/hook"]


def test_https_verifies_the_certificate_for_the_name(dns: FakeDNS, connections, tmp_path) -> None:
    certificates = make_certificates("hooks.example.com", tmp_path)
    policy = egress.HostPolicy.parse(["127.0.0.1"])
    with receiver(tls=certificates.server) as hooks:
        dns.answer("hooks.example.com", ["127.0.0.1"])
        dns.answer("other.example.com", ["127.0.0.1"])
        url = f"https://hooks.example.com:{hooks.port}/hook"
        assert _post(url, policy, verify=certificates.client()).status_code == 204
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            _post(f"https://other.example.com:{hooks.port}/hook", policy, verify=certificates.client())
    assert len(hooks.requests) == 1
    assert hooks.requests[0].headers["Host"] == f"hooks.example.com:{hooks.port}"


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.0.0.1", "169.254.169.254", "100.64.0.1", "224.0.0.1", "::1", "::ffff:10.0.0.1",
     "2002:c0a8:101::1", "64:ff9b::7f00:1", "fe80::1%1"],
)  # fmt: skip
def test_is_public_refuses_every_non_public_address(address: str) -> None:
    import ipaddress

    assert egress.is_public(ipaddress.ip_address(address)) is False


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888"])
def test_is_public_accepts_public_addresses(address: str) -> None:
    import ipaddress

    assert egress.is_public(ipaddress.ip_address(address)) is True
