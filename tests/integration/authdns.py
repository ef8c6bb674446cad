"""Peers for the authentication tests: an authoritative DNS server on loopback (dnslib, UDP
and TCP on one port) holding SPF, DKIM and DMARC test zones, and DKIM/ARC signing by dkimpy
(an implementation independent of mailflow's).

Zone entries are {(name, type): [rdata...]}; a name in `blackhole` is never answered (a DNS
timeout), one in `servfail` gets SERVFAIL; any other unknown name is NXDOMAIN.
"""

import base64
import socket
import subprocess
import threading
import time

import pytest

try:
    import dkim
    import nacl.signing
    from dnslib import A, PTR, QTYPE, RCODE, RR, SOA, TXT
    from dnslib.server import BaseResolver, DNSServer
except ImportError as e:  # pragma: no cover - test.sh installs them
    pytest.fail(f"python package missing ({e}): run test.sh, which installs dnslib, dkimpy and pynacl")


# The SOA of negative answers (RFC 2308), as a real server sends it: resolvers cache the
# "no such name" for its minimum TTL.
NEGATIVE = RR("test.", QTYPE.SOA, rdata=SOA("ns.test.", "hostmaster.test.", (1, 3600, 600, 86400, 300)), ttl=300)

# The EDNS payload size clients advertise these days (DNS flag day 2020).
UDP_PAYLOAD = 1232


def free_port_both():
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", port))
                    return port
                except OSError:
                    continue
    raise RuntimeError("no free port")


def txt(text):
    """A TXT rdata; long texts are split into 255-byte strings as RFC 7208 §3.3 describes."""
    data = text.encode()
    return TXT([data[i : i + 255] for i in range(0, len(data), 255)] or [b""])


class AuthDNS:
    def __init__(self, zone, blackhole=(), servfail=()):
        self.zone = {(n.lower().rstrip(".") + ".", t): v for (n, t), v in zone.items()}
        self.blackhole = {n.lower().rstrip(".") + "." for n in blackhole}
        self.servfail = {n.lower().rstrip(".") + "." for n in servfail}
        self.queries = []
        dns = self

        class Resolver(BaseResolver):
            def resolve(self, request, handler):
                reply = request.reply()
                qname = str(request.q.qname).lower()
                qtype = QTYPE[request.q.qtype]
                dns.queries.append((qname, qtype))
                if qname in dns.blackhole:
                    time.sleep(30)  # the client gave up long ago
                    return reply
                if qname in dns.servfail:
                    reply.header.rcode = RCODE.SERVFAIL
                    return reply
                if not any(name == qname for name, _ in dns.zone):
                    reply.header.rcode = RCODE.NXDOMAIN
                    reply.add_auth(NEGATIVE)
                    return reply
                for rdata in dns.zone.get((qname, qtype), []):
                    reply.add_answer(RR(qname, getattr(QTYPE, qtype), rdata=rdata, ttl=300))
                if not reply.rr:
                    reply.add_auth(NEGATIVE)
                if handler.protocol == "udp" and len(reply.pack()) > UDP_PAYLOAD:
                    # As a real server does: an answer too big for UDP is truncated (TC), and
                    # the client asks again over TCP.
                    reply = request.reply()
                    reply.header.tc = 1
                return reply

        class Quiet:
            def __getattr__(self, name):
                return lambda *a, **k: None

        self.port = free_port_both()
        self.servers = [
            DNSServer(Resolver(), port=self.port, address="127.0.0.1", logger=Quiet()),
            DNSServer(Resolver(), port=self.port, address="127.0.0.1", logger=Quiet(), tcp=True),
        ]
        for s in self.servers:
            s.server.daemon_threads = True
            s.start_thread()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def close(self):
        for s in self.servers:
            threading.Thread(target=s.stop, daemon=True).start()


class RsaKey:
    def __init__(self, tmp_path, name):
        path = tmp_path / f"{name}.pem"
        subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(path), "2048"], check=True, capture_output=True)
        self.private = path.read_bytes()
        der = subprocess.run(
            ["openssl", "rsa", "-in", str(path), "-pubout", "-outform", "DER"], check=True, capture_output=True
        ).stdout
        self.record = "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()
        self.algorithm = b"rsa-sha256"


class Ed25519Key:
    def __init__(self):
        key = nacl.signing.SigningKey.generate()
        self.private = base64.b64encode(bytes(key))
        self.record = "v=DKIM1; k=ed25519; p=" + base64.b64encode(bytes(key.verify_key)).decode()
        self.algorithm = b"ed25519-sha256"


SIGNED = [b"from", b"to", b"subject", b"date", b"message-id"]


def message(from_addr, subject="hello", body="Hello there.\r\n", extra=""):
    return (
        f"From: <{from_addr}>\r\nTo: <user@example.org>\r\nSubject: {subject}\r\n"
        f"Date: Mon, 07 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{time.time_ns()}@test>\r\n{extra}\r\n{body}"
    ).encode()


def sign(msg, key, domain, selector, canon=(b"relaxed", b"relaxed"), length=False):
    """`msg` with a DKIM-Signature by dkimpy in front."""
    sig = dkim.sign(
        msg,
        selector.encode(),
        domain.encode(),
        key.private,
        canonicalize=canon,
        signature_algorithm=key.algorithm,
        include_headers=SIGNED,
        length=length,
    )
    return sig + msg


def arc_seal(msg, key, domain, selector, srv_id):
    """`msg` ARC-sealed by dkimpy as `srv_id` (it needs that host's Authentication-Results)."""
    headers = dkim.arc_sign(msg, selector.encode(), domain.encode(), key.private, srv_id.encode())
    return b"".join(headers) + msg
