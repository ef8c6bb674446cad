"""SMTP receiver: no open relay. Only local_domains (example.org, test.example) are accepted
as recipients; the classic address tricks that slip mail past a relay check are refused.

Issue #2: "relay refusal with the tricky address forms".
"""

import signal
import smtplib

import pytest

from smtp_raw import RawClient, queue_id, simple_message, start_shared, wait_files


@pytest.fixture
def mf(daemon):
    return daemon()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One daemon for the tests that only look at replies."""
    d = start_shared(tmp_path_factory)
    yield d
    d.stop(signal.SIGKILL)


def open_tx(d):
    c = RawClient(d.port)
    c.ehlo()
    c.expect("MAIL FROM:<a@client.test>", 250)
    return c


@pytest.mark.parametrize(
    "rcpt",
    [
        "victim@elsewhere.test",
        "victim@sub.example.org",  # a sub-domain is not the domain
        "victim@example.org.elsewhere.test",
        "victim@notexample.org",
        "victim@EXAMPLE.COM",
    ],
)
def test_non_local_recipient_is_relaying_denied(shared, rcpt):
    with open_tx(shared) as c:
        r = c.cmd(f"RCPT TO:<{rcpt}>")
        assert (r.code, r.status) == (550, "5.7.1")
        assert "Relaying denied" in r.text
        assert c.cmd("DATA").code == 503


@pytest.mark.parametrize(
    "rcpt",
    [
        "<@a.elsewhere.test:b@example.org>",  # source route through a local domain
        "<@example.org:victim@elsewhere.test>",  # source route through us to elsewhere
        "<@example.org,@test.example:victim@elsewhere.test>",
        '<"victim@elsewhere.test"@example.org>',  # quoted local part hiding an address
        '<"x@y"@example.org>',
        "<victim%elsewhere.test@example.org>",  # percent hack
        "<x%y@example.org>",
        "<elsewhere.test!victim@example.org>",  # bang path
        "<y!x@example.org>",
    ],
)
def test_tricky_address_forms_are_550_5_7_1(shared, rcpt):
    with open_tx(shared) as c:
        r = c.cmd(f"RCPT TO:{rcpt}")
        assert (r.code, r.status) == (550, "5.7.1"), r
        assert "Relaying denied" in r.text
        assert c.cmd("DATA").code == 503  # nothing got in


@pytest.mark.parametrize(
    "rcpt",
    [
        "<victim@elsewhere.test@example.org>",
        "<victim\\@elsewhere.test@example.org>",
        "<victim@elsewhere.test>@example.org",
        "<victim@example.org\x00@elsewhere.test>",
        "<victim@example.org.>",
        "<victim@example.org >",
    ],
)
def test_malformed_tricks_are_refused(shared, rcpt):
    with open_tx(shared) as c:
        r = c.cmd(f"RCPT TO:{rcpt}")
        assert r.code in (501, 550, 553), r
        assert c.cmd("DATA").code == 503


def test_tricky_sender_forms_are_refused(shared):
    with RawClient(shared.port) as c:
        c.ehlo()
        for sender in ("<@a.test:b@client.test>", '<"x@y"@client.test>', "<x%y@client.test>", "<y!x@client.test>"):
            r = c.cmd(f"MAIL FROM:{sender}")
            assert (r.code, r.status) == (550, "5.7.1"), (sender, r)
        c.expect("MAIL FROM:<x@client.test>", 250)


@pytest.mark.parametrize("rcpt", ["user@example.org", "User@Example.ORG", "first.last+tag@test.example"])
def test_local_recipients_are_accepted(shared, rcpt):
    with open_tx(shared) as c:
        r = c.cmd(f"RCPT TO:<{rcpt}>")
        assert (r.code, r.status) == (250, "2.1.5")


def test_domain_case_is_folded_for_delivery(mf):
    with RawClient(mf.port) as c:
        c.ehlo()
        queue_id(c.send_mail("a@client.test", ["Mixed@EXAMPLE.org"], simple_message()))
    assert len(wait_files(mf, "mixed@example.org", 1)) == 1


def test_mixed_recipients_only_local_get_it(mf):
    with smtplib.SMTP("127.0.0.1", mf.port, timeout=5) as s:
        refused = s.sendmail(
            "a@client.test",
            ["user@example.org", "victim@elsewhere.test", "<@example.org:v2@elsewhere.test>", "x%y@example.org"],
            simple_message(subject="mixed"),
        )
    assert set(refused) == {"victim@elsewhere.test", "<@example.org:v2@elsewhere.test>", "x%y@example.org"}
    assert all(code == 550 for code, _ in refused.values())
    assert len(wait_files(mf, "user@example.org", 1)) == 1
    # Nothing anywhere else under the mail folder.
    mail_root = mf.root / "data" / "mail"
    assert sorted(p.name for p in mail_root.iterdir()) == ["user@example.org"]


def test_all_recipients_refused_raises_in_smtplib(mf):
    with smtplib.SMTP("127.0.0.1", mf.port, timeout=5) as s:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as exc:
            s.sendmail("a@client.test", ["victim@elsewhere.test"], simple_message())
    code, text = exc.value.recipients["victim@elsewhere.test"]
    assert code == 550 and b"5.7.1" in text
    assert not (mf.root / "data" / "mail").exists() or not any((mf.root / "data" / "mail").iterdir())
