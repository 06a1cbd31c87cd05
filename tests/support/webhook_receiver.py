"""A webhook receiver on a loopback port, over http or https, that records what reaches it."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    port: int
    requests: list[Received] = field(default_factory=list)
    # Path (without the query) -> (status, extra headers) answered instead of 204.
    answers: dict[str, tuple[int, dict[str, str]]] = field(default_factory=dict)


@contextmanager
def receiver(tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    """Serve on 127.0.0.1 until the block ends; with `tls`, over https."""
    record = Receiver(port=0)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            record.requests.append(Received(self.path, dict(self.headers.items()), body))
            status, headers = record.answers.get(self.path.partition("?")[0], (204, {}))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    record.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield record
    finally:
        server.shutdown()
        server.server_close()


@dataclass(frozen=True)
class Certificates:
    """A throw-away CA and a server certificate it signed for `name`."""

    ca_pem: str
    server: ssl.SSLContext

    def client(self) -> ssl.SSLContext:
        """Return a client context that trusts only the CA and checks host names."""
        return ssl.create_default_context(cadata=self.ca_pem)


def make_certificates(name: str, tmp_path) -> Certificates:
    """Issue a CA and a certificate for `name` (a DNS name) into `tmp_path`."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    return Certificates(ca.public_bytes(serialization.Encoding.PEM).decode(), server)


class FakeDNS:
    """Stands in for the resolver: names in `table` answer the listed addresses (in turn, per lookup), others
    resolve for real. Counts lookups per name."""

    def __init__(self, real=socket.getaddrinfo) -> None:
        self._real = real
        self.table: dict[str, list[list[str]]] = {}
        self.lookups: dict[str, int] = {}

    def answer(self, name: str, *answers: list[str]) -> None:
        """Make `name` answer each list of addresses in turn, the last one from then on."""
        self.table[name] = list(answers)

    def getaddrinfo(self, host, port, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name not in self.table:
            return self._real(host, port, *args, **kwargs)
        self.lookups[name] = self.lookups.get(name, 0) + 1
        answers = self.table[name]
        addresses = answers[min(self.lookups[name], len(answers)) - 1]
        return [
            (
                socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET,
                socket.SOCK_STREAM,
                socket.IPPROTO_TCP,
                "",
                (address, int(port or 0)),
            )
            for address in addresses
        ]
