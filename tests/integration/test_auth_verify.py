"""Verification on receipt: SPF, iprev, DKIM, DMARC and ARC against a local authoritative DNS
server (dnslib) and messages signed by dkimpy, sent over real SMTP (smtplib). A script records
what it sees (`ctx.spf`, `ctx.iprev`, `msg.auth`) in headers of the delivered message; the
tests also read mailflow's own `Authentication-Results:` header.
"""

import email
import email.policy
import smtplib
import time

import pytest

from authdns import AuthDNS, Ed25519Key, RsaKey, arc_seal, message, sign, txt
from conftest import make_config, wait_for

RECORDER = """
fn mail_from(ctx) { log("spf " + ctx.spf.result + " " + ctx.spf.domain); }
fn data(ctx, msg) {
    msg.add_header("X-Seen-SPF", ctx.spf.result + " " + ctx.spf.domain);
    msg.add_header("X-Seen-Iprev", ctx.iprev.result + " " + ctx.iprev.name);
    let d = "-";
    for s in msg.auth.dkim { d += " " + s.result + ":" + s.domain + ":" + s.selector + ":" + s.algorithm; }
    msg.add_header("X-Seen-DKIM", d);
    let a = "-";
    for i in msg.auth.dmarc.aligned { a += " " + i; }
    let m = msg.auth.dmarc;
    msg.add_header("X-Seen-DMARC", m.result + " " + m.policy + " " + m.domain + " " + a);
    msg.add_header("X-Seen-ARC", msg.auth.arc.result);
}
"""


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keys")
    return {"rsa": RsaKey(tmp, "rsa"), "other": RsaKey(tmp, "other"), "ed": Ed25519Key()}


def zone(keys):
    from dnslib import A

    spf_many = {("many.test", "TXT"): [txt("v=spf1 include:l1.many.test -all")]}
    for n in range(1, 12):
        spf_many[(f"l{n}.many.test", "TXT")] = [txt(f"v=spf1 include:l{n + 1}.many.test -all")]
    spf_many[("l12.many.test", "TXT")] = [txt("v=spf1 ip4:127.0.0.0/8 -all")]
    huge = "v=spf1 " + " ".join(f"ip4:10.{n // 250}.{n % 250}.1" for n in range(400)) + " ip4:127.0.0.1 -all"
    z = {
        ("good.test", "TXT"): [txt("v=spf1 ip4:127.0.0.1 -all")],
        ("good.test", "A"): [A("127.0.0.1")],
        ("_dmarc.good.test", "TXT"): [txt("v=DMARC1; p=reject")],
        ("rsa._domainkey.good.test", "TXT"): [txt(keys["rsa"].record)],
        ("ed._domainkey.good.test", "TXT"): [txt(keys["ed"].record)],
        ("revoked._domainkey.good.test", "TXT"): [txt("v=DKIM1; k=rsa; p=")],
        ("rsa._domainkey.other.test", "TXT"): [txt(keys["other"].record)],
        ("other.test", "TXT"): [txt("v=spf1 ip4:127.0.0.1 -all")],
        ("fail.test", "TXT"): [txt("v=spf1 -all")],
        ("soft.test", "TXT"): [txt("v=spf1 ~all")],
        ("neutral.test", "TXT"): [txt("v=spf1 ?all")],
        ("nospf.test", "A"): [A("127.0.0.1")],
        ("inc.test", "TXT"): [txt("v=spf1 include:a.inc.test -all")],
        ("a.inc.test", "TXT"): [txt("v=spf1 include:b.inc.test -all")],
        ("b.inc.test", "TXT"): [txt("v=spf1 ip4:127.0.0.0/8 -all")],
        ("void.test", "TXT"): [txt("v=spf1 a:v1.void.test a:v2.void.test a:v3.void.test ip4:127.0.0.1 -all")],
        ("voids.test", "TXT"): [txt("v=spf1 " + " ".join(f"a:v{n}.voids.test" for n in range(11)) + " ip4:127.0.0.1 -all")],
        ("macro.test", "TXT"): [txt("v=spf1 exists:%{i}.%{l}._spf.macro.test -all")],
        ("127.0.0.1.alice._spf.macro.test", "A"): [A("127.0.0.2")],
        ("loop.test", "TXT"): [txt("v=spf1 include:loop.test -all")],
        ("huge.test", "TXT"): [txt(huge)],
        ("quar.test", "TXT"): [txt("v=spf1 -all")],
        ("_dmarc.quar.test", "TXT"): [txt("v=DMARC1; p=quarantine")],
        ("nonep.test", "TXT"): [txt("v=spf1 -all")],
        ("_dmarc.nonep.test", "TXT"): [txt("v=DMARC1; p=none")],
        ("org.test", "A"): [A("127.0.0.1")],
        ("_dmarc.org.test", "TXT"): [txt("v=DMARC1; p=none; sp=reject")],
        ("sub.org.test", "A"): [A("127.0.0.1")],
    }
    z.update(spf_many)
    return z


@pytest.fixture(scope="module")
def dns(keys):
    server = AuthDNS(zone(keys), blackhole=["slow.test", "_dmarc.slow.test"], servfail=["broken.test"])
    yield server
    server.close()


@pytest.fixture
def mf(daemon, dns):
    return daemon(
        scripts={"10-record.rhai": RECORDER},
        extra=f'[auth]\ndns_server = "{dns.address}"\ndns_timeout = "1s"\n',
    )


def deliver(d, msg, sender, helo="client.good.test", source=None):
    """Sends over SMTP and returns the delivered message (parsed) and its raw bytes."""
    before = set(d.messages("user@example.org"))
    with smtplib.SMTP("127.0.0.1", d.port, timeout=20, source_address=source) as s:
        s.ehlo(helo)
        assert s.sendmail(sender, ["user@example.org"], msg) == {}
    new = wait_for(lambda: [p for p in d.messages("user@example.org") if p not in before], timeout=10)
    assert len(new) == 1, new
    raw = new[0].read_bytes()
    return email.message_from_bytes(raw, policy=email.policy.compat32), raw


def seen(parsed, what):
    return " ".join(parsed[f"X-Seen-{what}"].split())


def our_results(parsed):
    values = [v for v in parsed.get_all("Authentication-Results", []) if v.strip().startswith("mx.test.example;")]
    assert len(values) == 1, values
    return " ".join(values[0].split())


# --- DKIM ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case, expected",
    [
        ("rsa relaxed", "pass:good.test:rsa:rsa-sha256"),
        ("rsa simple", "pass:good.test:rsa:rsa-sha256"),
        ("ed25519", "pass:good.test:ed:ed25519-sha256"),
        ("body tampered", "fail:good.test:rsa:rsa-sha256"),
        ("header tampered", "fail:good.test:rsa:rsa-sha256"),
        ("wrong key", "fail:good.test:rsa:rsa-sha256"),
        ("revoked key", "permerror:good.test:revoked:rsa-sha256"),
        ("missing record", "permerror:good.test:nokey:rsa-sha256"),
        ("length tag", "policy:good.test:rsa:rsa-sha256"),
        ("malformed", "permerror:good.test:rsa:rsa-sha256"),
    ],
)
def test_dkim_signatures_from_dkimpy(mf, keys, case, expected):
    msg = message("alice@good.test")
    rsa = keys["rsa"]
    if case == "rsa relaxed":
        signed = sign(msg, rsa, "good.test", "rsa")
    elif case == "rsa simple":
        signed = sign(msg, rsa, "good.test", "rsa", canon=(b"simple", b"simple"))
    elif case == "ed25519":
        signed = sign(msg, keys["ed"], "good.test", "ed")
    elif case == "body tampered":
        signed = sign(msg, rsa, "good.test", "rsa").replace(b"Hello there.", b"Hello thereX")
    elif case == "header tampered":
        signed = sign(msg, rsa, "good.test", "rsa").replace(b"Subject: hello", b"Subject: HELLO!")
    elif case == "wrong key":
        signed = sign(msg, keys["other"], "good.test", "rsa")
    elif case == "revoked key":
        signed = sign(msg, rsa, "good.test", "revoked")
    elif case == "missing record":
        signed = sign(msg, rsa, "good.test", "nokey")
    elif case == "length tag":
        # Signed with l=, then content appended after the signed length: must not pass.
        signed = sign(msg, rsa, "good.test", "rsa", length=True) + b"Click here: http://evil.test/\r\n"
    elif case == "malformed":
        signed = sign(msg, rsa, "good.test", "rsa").replace(b"bh=", b"bh=!!!", 1)
    parsed, _ = deliver(mf, signed, "alice@good.test")
    assert seen(parsed, "DKIM") == "- " + expected
    result = expected.split(":")[0]
    assert f"dkim={result}" in our_results(parsed)
    assert "header.d=good.test" in our_results(parsed)


def test_every_signature_is_reported(mf, keys):
    msg = message("alice@good.test")
    signed = sign(sign(msg, keys["rsa"], "good.test", "rsa"), keys["ed"], "good.test", "ed")
    parsed, _ = deliver(mf, signed, "alice@good.test")
    assert seen(parsed, "DKIM") == "- pass:good.test:ed:ed25519-sha256 pass:good.test:rsa:rsa-sha256"
    results = our_results(parsed)
    assert "dkim=pass header.d=good.test header.s=ed header.a=ed25519-sha256" in results
    assert "dkim=pass header.d=good.test header.s=rsa header.a=rsa-sha256" in results


def test_unsigned_mail_has_no_dkim_results(mf):
    parsed, _ = deliver(mf, message("alice@good.test"), "alice@good.test")
    assert seen(parsed, "DKIM") == "-"
    assert "dkim=none" in our_results(parsed)


def test_large_spilled_message_is_verified_from_its_file(mf, keys):
    body = ("x" * 76 + "\r\n") * 6000  # ~470 KB: kept in a spool file, not in memory
    msg = message("alice@good.test", body=body)
    parsed, raw = deliver(mf, sign(msg, keys["rsa"], "good.test", "rsa"), "alice@good.test")
    assert seen(parsed, "DKIM") == "- pass:good.test:rsa:rsa-sha256"
    assert len(raw) > 400_000
    tampered = sign(msg, keys["rsa"], "good.test", "rsa").replace(b"xxxx\r\n", b"xxxy\r\n", 1)
    parsed, _ = deliver(mf, tampered, "alice@good.test")
    assert seen(parsed, "DKIM") == "- fail:good.test:rsa:rsa-sha256"


# --- SPF ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sender, expected",
    [
        ("alice@good.test", "pass good.test"),
        ("alice@fail.test", "fail fail.test"),
        ("alice@soft.test", "softfail soft.test"),
        ("alice@neutral.test", "neutral neutral.test"),
        ("alice@nospf.test", "none nospf.test"),
        ("alice@inc.test", "pass inc.test"),
        ("alice@many.test", "permerror many.test"),
        # Void lookups (NXDOMAIN) do not match and count toward the 10-lookup limit; mail-auth
        # has no separate limit of 2 (a SHOULD of RFC 7208 §4.6.4, see docs/authentication.md).
        ("alice@void.test", "pass void.test"),
        ("alice@voids.test", "permerror voids.test"),
        ("alice@macro.test", "pass macro.test"),
        ("bob@macro.test", "fail macro.test"),
        ("alice@loop.test", "permerror loop.test"),
        ("alice@broken.test", "temperror broken.test"),
        ("alice@huge.test", "pass huge.test"),
    ],
)
def test_spf_of_the_envelope_sender(mf, sender, expected):
    parsed, _ = deliver(mf, message(sender), sender)
    assert seen(parsed, "SPF") == expected
    result, domain = expected.split()
    assert f"spf={result} smtp.mailfrom={domain}" in our_results(parsed)


def test_null_sender_checks_the_helo_name(mf):
    parsed, _ = deliver(mf, message("mailer-daemon@good.test"), "", helo="good.test")
    assert seen(parsed, "SPF") == "pass good.test"
    assert "spf=pass smtp.helo=good.test" in our_results(parsed)


def test_dns_timeout_is_a_temperror_within_the_timeout(mf):
    with smtplib.SMTP("127.0.0.1", mf.port, timeout=20) as s:
        s.ehlo("client.good.test")
        started = time.monotonic()
        code, _ = s.mail("alice@slow.test")
        elapsed = time.monotonic() - started
        assert code == 250
        assert elapsed < 2.5, f"MAIL FROM took {elapsed:.2f}s with dns_timeout = 1s"
        s.rcpt("user@example.org")
        started = time.monotonic()
        code, _ = s.data(message("alice@slow.test"))
        assert code == 250, "a DNS failure never refuses mail by itself"
        assert time.monotonic() - started < 4.5
    (path,) = wait_for(lambda: mf.messages("user@example.org"), timeout=10)
    parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.compat32)
    assert seen(parsed, "SPF") == "temperror slow.test"
    assert seen(parsed, "DMARC").startswith("temperror ")


# --- iprev --------------------------------------------------------------------------------


def test_iprev_pass_and_fail(mf):
    # The resolver answers loopback names itself (RFC 6761: 127.0.0.0/8 is "localhost", and
    # "localhost" is 127.0.0.1), so on loopback iprev passes for 127.0.0.1 only.
    parsed, _ = deliver(mf, message("alice@good.test"), "alice@good.test")
    assert seen(parsed, "Iprev") == "pass localhost"
    assert "iprev=pass policy.iprev=127.0.0.1 (localhost)" in our_results(parsed)
    parsed, _ = deliver(mf, message("alice@good.test"), "alice@good.test", source=("127.0.0.3", 0))
    assert seen(parsed, "Iprev") == "fail localhost"
    assert "iprev=fail policy.iprev=127.0.0.3" in our_results(parsed)


# --- DMARC --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case, sender, from_addr, signer, expected",
    [
        ("aligned", "alice@good.test", "alice@good.test", "good.test", "pass reject good.test - dkim spf"),
        ("dkim only", "bounce@other.test", "alice@good.test", "good.test", "pass reject good.test - dkim"),
        ("spf only", "alice@good.test", "alice@good.test", None, "pass reject good.test - spf"),
        ("unaligned", "alice@other.test", "alice@good.test", "other.test", "fail reject good.test -"),
        ("quarantine", "alice@other.test", "alice@quar.test", None, "fail quarantine quar.test -"),
        ("p=none", "alice@other.test", "alice@nonep.test", None, "fail none nonep.test -"),
        ("subdomain sp=", "alice@other.test", "alice@sub.org.test", None, "fail reject sub.org.test -"),
        ("no record", "alice@other.test", "alice@other.test", None, "none none other.test -"),
    ],
)
def test_dmarc(mf, keys, case, sender, from_addr, signer, expected):
    msg = message(from_addr)
    if signer == "good.test":
        msg = sign(msg, keys["rsa"], "good.test", "rsa")
    elif signer == "other.test":
        msg = sign(msg, keys["other"], "other.test", "rsa")
    parsed, _ = deliver(mf, msg, sender)
    assert seen(parsed, "DMARC") == expected
    result = expected.split()[0]
    assert f"dmarc={result}" in our_results(parsed)


# --- ARC ----------------------------------------------------------------------------------


def test_arc_chain_sealed_by_dkimpy(mf, keys):
    msg = message("alice@good.test", extra="Authentication-Results: relay.good.test; spf=pass smtp.mailfrom=good.test\r\n")
    sealed = arc_seal(msg, keys["rsa"], "good.test", "rsa", "relay.good.test")
    parsed, _ = deliver(mf, sealed, "alice@good.test")
    assert seen(parsed, "ARC") == "pass"
    assert "arc=pass" in our_results(parsed)
    parsed, _ = deliver(mf, sealed.replace(b"Hello there.", b"Hello THERE."), "alice@good.test")
    assert seen(parsed, "ARC") == "fail"
    parsed, _ = deliver(mf, message("alice@good.test"), "alice@good.test")
    assert seen(parsed, "ARC") == "none"


# --- the header ---------------------------------------------------------------------------


def test_forged_results_claiming_our_id_are_removed(mf):
    forged = message(
        "alice@fail.test",
        extra="Authentication-Results: mx.test.example; dkim=pass header.d=bank.test\r\n"
        "Authentication-Results: MX.TEST.EXAMPLE (sneaky);\r\n\tdmarc=pass\r\n"
        "Authentication-Results: relay.other.test; spf=pass\r\n",
    )
    parsed, raw = deliver(mf, forged, "alice@fail.test")
    assert b"bank.test" not in raw and b"sneaky" not in raw
    assert "spf=fail smtp.mailfrom=fail.test" in our_results(parsed)
    assert any(v.strip().startswith("relay.other.test;") for v in parsed.get_all("Authentication-Results"))


def test_forged_results_are_removed_from_a_large_message_too(mf):
    forged = message(
        "alice@fail.test",
        extra="Authentication-Results: mx.test.example; dkim=pass header.d=bank.test\r\n",
        body=("y" * 76 + "\r\n") * 5000,
    )
    parsed, raw = deliver(mf, forged, "alice@fail.test")
    assert b"bank.test" not in raw
    assert raw.endswith(b"y" * 76 + b"\r\n")
    assert "spf=fail" in our_results(parsed)


def test_verification_off(daemon, dns):
    d = daemon(scripts={"10-record.rhai": RECORDER}, extra="[auth]\nverify = false\n")
    forged = message("alice@good.test", extra="Authentication-Results: mx.test.example; dkim=pass\r\n")
    parsed, _ = deliver(d, forged, "alice@good.test")
    assert seen(parsed, "SPF") == "none"
    assert seen(parsed, "DMARC") == "none none -"
    assert [v.split(";")[0].strip() for v in parsed.get_all("Authentication-Results")] == ["mx.test.example"]
    assert "spf=" not in parsed["Authentication-Results"]


# --- examples/dmarc-gate in the daemon ----------------------------------------------------


def test_dmarc_gate_example_in_the_daemon(daemon, dns, keys):
    import shutil

    from conftest import REPO

    d = daemon(start=False, extra=f'[auth]\ndns_server = "{dns.address}"\ndns_timeout = "1s"\n')
    shutil.rmtree(d.scripts_dir)
    shutil.copytree(REPO / "examples" / "dmarc-gate" / "scripts", d.scripts_dir)
    d.start()

    def send(sender, msg):
        with smtplib.SMTP("127.0.0.1", d.port, timeout=20) as s:
            s.ehlo("client.good.test")
            s.mail(sender)
            s.rcpt("user@example.org")
            return s.data(msg)

    # good.test publishes p=reject; unsigned, and SPF passes for other.test only: refused.
    code, text = send("alice@other.test", message("alice@good.test", subject="phish"))
    assert (code, text) == (550, b"5.7.1 good.test asks receivers to reject mail that fails DMARC")
    assert send("alice@fail.test", message("alice@fail.test", subject="spf fails"))[0] == 250
    assert send("alice@other.test", message("ceo@example.org", subject="favour"))[0] == 250
    signed = sign(message("alice@good.test", subject="genuine"), keys["rsa"], "good.test", "rsa")
    assert send("alice@other.test", signed)[0] == 250

    junk = wait_for(lambda: d.messages("user@example.org", folder="Junk"), timeout=10)
    inbox = wait_for(lambda: len(d.messages("user@example.org")) == 2 and d.messages("user@example.org"), timeout=10)
    assert [email.message_from_bytes(p.read_bytes())["Subject"] for p in junk] == ["spf fails"]
    subjects = sorted(email.message_from_bytes(p.read_bytes())["Subject"] for p in inbox)
    assert subjects == ["[UNVERIFIED] favour", "genuine"]
