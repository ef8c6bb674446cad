#!/usr/bin/env python3
"""Writes the seed entries of fuzz/corpus/ from the test suites (run from the repository root).

Seeds come from tests/corpus/*.eml, the SMTP command lines of tests/integration/*.py, the
configs of examples/*/mailflow.toml, and a few hand-written protocol exchanges. Existing files
are left alone; a seed is named seed-<what>.
"""
import glob
import json
import os
import re
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def crlf(data):
    return re.sub(rb"\r?\n", b"\r\n", data)


def stuffed(data):
    data = crlf(data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return re.sub(rb"(?m)^\.", b"..", data) + b".\r\n"


emls = sorted(glob.glob(os.path.join(ROOT, "tests", "corpus", "*.eml")))

# message_view: the .eml files as stored (LF) and as received (CRLF).
for path in emls:
    name = os.path.basename(path)[:-4]
    raw = open(path, "rb").read()
    put("message_view", name, raw)
    put("message_view", name + "-crlf", crlf(raw))

# data_reader: [limit u16][split count][split points u16...] then the DATA stream.
for path in emls:
    name = os.path.basename(path)[:-4]
    put("data_reader", name, b"\xff\xff\x00" + stuffed(open(path, "rb").read()) + b"QUIT\r\n")
put("data_reader", "small-limit-split", struct.pack("<HBHH", 16, 2, 5, 30) + b"Subject: x\r\n\r\n..dot\r\nline two\r\n.\r\nNOOP\r\n")
for i, case in enumerate([b"a\n.\nMAIL FROM:<x@y.z>\r\n", b"a\r.\rb\r\n.\r\n", b"a\r\n.\rb\r\n.\r\n", b".\r\n"]):
    put("data_reader", f"smuggling-{i}", struct.pack("<HBH", 0xFFFF, 1, 3) + case)

# smtp_command: every literal command line of the integration tests, and whole sessions.
lines = set()
for path in glob.glob(os.path.join(ROOT, "tests", "integration", "*.py")):
    for m in re.finditer(r'\.cmd\("([^"{}\\]*)"\)', open(path, encoding="utf-8").read()):
        lines.add(m.group(1))
for i, line in enumerate(sorted(lines)):
    put("smtp_command", f"line-{i:02}", line.encode() + b"\r\n")
put("smtp_command", "session", "EHLO client.example\r\nMAIL FROM:<a@client.test> SIZE=10 BODY=8BITMIME\r\n"
    "RCPT TO:<user@example.org>\r\nRCPT TO:<Postmaster>\r\nDATA\r\nRSET\r\nNOOP\r\nQUIT\r\n")
put("smtp_command", "smtputf8", "EHLO c\r\nMAIL FROM:<jöran@client.test> SMTPUTF8\r\nRCPT TO:<jöran@exämple.org>\r\n")
put("smtp_command", "auth", "AUTH PLAIN AHVzZXIAcGFzc3dvcmQ=\r\nAUTH LOGIN dXNlcg==\r\ncGFzc3dvcmQ=\r\n*\r\n")
put("smtp_command", "relay-tricks", "RCPT TO:<@a.org:b@c.org>\r\nRCPT TO:<\"x@y\"@local.org>\r\n"
    "RCPT TO:<x%y.org@local.org>\r\nRCPT TO:<y.org!x@local.org>\r\nMAIL FROM:<a@[IPv6:::1]>\r\n")
put("smtp_command", "bad", "FROB x\r\n\r\nMAIL FROM:a@b.c\r\nMAIL FROM:<a@b.c> FROB=1\r\nHELO\r\n\x1b[31mEVIL\x07\r\n")

# address: [flags: bit 0 = SMTPUTF8] then the text.
for i, text in enumerate(["Alice.B+tag@Example.ORG", "a@[127.0.0.1]", "a@[IPv6:::1]", "@a.org,@b.org:b@c.org",
                          "\"x@y\"@local.org", "x%y.org@local.org", "a/b@example.org", "a@b..c", "MAIL FROM:<a@b.c> SIZE=10",
                          "RCPT TO:<>", "x@y@local.org"]):
    put("address", f"ascii-{i:02}", b"\x00" + text.encode())
for i, text in enumerate(["jöran@exämple.org", "RCPT TO:<jöran@example.org>", "ü@İstanbul.example"]):
    put("address", f"utf8-{i:02}", b"\x01" + text.encode())

# pop3_response: a status line, then a multi-line response.
put("pop3_response", "greeting-apop", "+OK POP3 ready <1896.697170952@dbc.mtview.ca.us>\r\n")
put("pop3_response", "stat", "+OK 2 320\r\n")
put("pop3_response", "uidl", "+OK\r\n1 whqtswO00WBw418f9t5JxYwZ\r\n2 QhdPYR:00WBw1Ph7x7\r\n.\r\n")
put("pop3_response", "list", "+OK 2 messages\r\n1 120\r\n2 200\r\n.\r\n")
put("pop3_response", "err", "-ERR no such message\r\n")
if emls:
    put("pop3_response", "retr", b"+OK 120 octets\r\n" + stuffed(open(emls[4], "rb").read()))

# imap_response: what a server sends (Dovecot-like), and mailbox names.
put("imap_response", "greeting", "* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN] Dovecot ready.\r\n")
put("imap_response", "capability", "* CAPABILITY IMAP4rev1 IDLE MOVE UIDPLUS CONDSTORE\r\nA1 OK Capability completed.\r\n")
put("imap_response", "list", "* LIST (\\HasNoChildren) \".\" INBOX\r\n* LIST (\\HasChildren \\Noselect) \"/\" \"Lists\"\r\n"
    "* LIST () \".\" \"Entw&APw-rfe\"\r\nA2 OK List completed.\r\n")
put("imap_response", "select", "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1)\r\n* 3 EXISTS\r\n* 0 RECENT\r\n"
    "* OK [UIDVALIDITY 1700000000] UIDs valid\r\n* OK [UIDNEXT 4] Predicted next UID\r\nA3 OK [READ-WRITE] Select completed.\r\n")
put("imap_response", "fetch", "* 1 FETCH (UID 5 FLAGS (\\Seen $Junk) RFC822.SIZE 42 BODY[] {42}\r\n"
    "Subject: hi\r\nFrom: a@b.c\r\n\r\nhello body\r\n)\r\nA4 OK Fetch completed.\r\n")
put("imap_response", "fetch-header", "* 2 FETCH (UID 6 RFC822.SIZE 900 BODY[HEADER] {14}\r\nSubject: x\r\n\r\n FLAGS ())\r\n")
put("imap_response", "idle", "+ idling\r\n* 4 EXISTS\r\n* 2 EXPUNGE\r\n* VANISHED (EARLIER) 1:3,5\r\n")
put("imap_response", "copyuid", "A5 OK [COPYUID 1700000000 1:3 10:12] Moved UIDs.\r\n* BYE Logging out\r\n")
put("imap_response", "names", "~peter/mail/台北/日本語 R&D Büro/2026 \\Seen $Label1 x) A1 DELETE INBOX")

# spool_record: segments as the spool writes them.
def record(i, actions):
    return json.dumps({"id": f"A{i}", "envelope": {"sender": "a@b.c", "recipients": ["d@e.f", "g@h.i"], "helo": "client.example",
                       "remote_ip": "192.0.2.1", "tls": True, "auth_user": ""}, "actions": actions,
                       "deliver_locally": True, "received_at": 1700000000 + i}, separators=(",", ":")).encode()

body = crlf(open(emls[0], "rb").read()) if emls else b"Subject: x\r\n\r\nbody\r\n"
seg = b"MFSEG1\n" + record(1, []) + b"\n%d\n" % len(body) + body
seg += record(2, [{"action": "set_header", "name": "X-Spam", "value": "yes"}, {"action": "file_into", "folder": "Junk"}]) + b"\n4\nx\r\n\0"
put("spool_record", "two-messages", seg)
put("spool_record", "empty", b"MFSEG1\n")
put("spool_record", "truncated", seg[: len(seg) // 2])

# config: every example's mailflow.toml.
for path in sorted(glob.glob(os.path.join(ROOT, "examples", "*", "mailflow.toml"))):
    put("config", os.path.basename(os.path.dirname(path)), open(path, "rb").read())
put("config", "minimal", "[smtp]\nlisten = [\"127.0.0.1:2525\"]\nhostname = \"mx.example.org\"\nlocal_domains = [\"example.org\"]\n")
