"""What commands print: `queue list` as an aligned table or `--json`, and every command ends
quietly when the reader of its output goes away (`mailflow queue list | head -3`) instead of
panicking with "failed printing to stdout: Broken pipe"."""

import json
import os
import re
import subprocess
import textwrap
import time

import pytest

from conftest import BIN, free_port, make_config
from smtpclient import mailflow

ENTRIES = 400


@pytest.fixture
def world(tmp_path):
    """A config, a script, a message and a queue of ENTRIES entries, no daemon."""
    config = tmp_path / "mailflow.toml"
    config.write_text(make_config(free_port()))
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "10-tag.rhai").write_text(textwrap.dedent("""\
        fn data(ctx, msg) {
            if msg.subject.contains("x") { return reject("550 5.7.1 no"); }
            accept()
        }
    """))
    message = tmp_path / "m.eml"
    message.write_text("From: a@example.org\r\nTo: b@example.org\r\nSubject: hello\r\n\r\nbody\r\n")
    queue = tmp_path / "data" / "queue"
    queue.mkdir(parents=True)
    now = int(time.time())
    for i in range(ENTRIES):
        entry = {
            "id": f"Q{i:05d}", "kind": "forward" if i % 2 else "bounce", "sender": "a@example.org",
            "recipients": [{"addr": f"r{i}@remote.example", "status": "pending", "last_error": ""},
                           {"addr": "done@remote.example", "status": "sent", "last_error": "250 ok"}],
            "attempts": i % 7, "created": now - 60, "next_try": now + 3600 if i % 3 else 0,
            "last_error": f"451 4.4.1 try again\r\n\x1b[31m{i}" if i % 5 == 0 else "", "origin": "O1",
        }
        (queue / f"Q{i:05d}.json").write_text(json.dumps(entry))
        (queue / f"Q{i:05d}.msg").write_text("Subject: x\r\n\r\nbody\r\n")
    return tmp_path


def test_queue_list_is_an_aligned_table(world):
    r = mailflow("queue", "list", "--config", world / "mailflow.toml")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == ENTRIES + 1
    header = lines[0]
    assert header.split()[:4] == ["ID", "KIND", "ATTEMPTS", "NEXT"]
    # Every column starts where its header does (numbers end where theirs ends).
    recipients = header.index("RECIPIENTS")
    attempts_end = header.index("ATTEMPTS") + len("ATTEMPTS")
    for line in lines[1:]:
        assert line[recipients - 2:recipients] == "  " and line[recipients] == "r", line
        assert line[attempts_end - 1].isdigit() and line[attempts_end] == " ", line
        assert "\x1b" not in line and "\r" not in line
    first = next(l for l in lines if l.startswith("Q00000"))
    assert "bounce" in first and "r0@remote.example" in first and "done@" not in first
    assert first.rstrip().endswith("451 4.4.1 try again   [31m0"), first


def test_queue_list_json_is_for_scripts(world):
    r = mailflow("queue", "list", "--json", "--config", world / "mailflow.toml")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == ENTRIES
    row = next(x for x in rows if x["id"] == "Q00005")
    assert row["kind"] == "forward" and row["attempts"] == 5 and row["sender"] == "a@example.org"
    assert row["recipients"][0] == {"addr": "r5@remote.example", "status": "pending", "last_error": ""}
    assert row["recipients"][1]["status"] == "sent"
    assert row["last_error"].startswith("451 4.4.1") and row["origin"] == "O1"
    assert isinstance(row["next_try"], int) and isinstance(row["created"], int)
    empty = world / "empty"
    empty.mkdir()
    (empty / "mailflow.toml").write_text(make_config(free_port()))
    r = mailflow("queue", "list", "--json", "--config", empty / "mailflow.toml")
    assert r.returncode == 0 and json.loads(r.stdout) == [], r.stdout


def run_with_reader_gone(args, after_lines, stdin=None):
    """Runs mailflow with stdout into a real pipe whose reader reads `after_lines` lines (0:
    none) and closes it. Returns (exit code, stderr)."""
    read_end, write_end = os.pipe()
    if after_lines == 0:
        os.close(read_end)
    proc = subprocess.Popen([str(BIN), *map(str, args)], stdout=write_end, stderr=subprocess.PIPE,
                            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL)
    os.close(write_end)
    if after_lines:
        with os.fdopen(read_end, "rb") as reader:
            for _ in range(after_lines):
                assert reader.readline(), "output ended before the reader went away"
    _, err = proc.communicate(input=stdin, timeout=60)
    return proc.returncode, err.decode(errors="replace")


COMMANDS = {
    "queue-list": (["queue", "list"], None),
    "queue-list-json": (["queue", "list", "--json"], None),
    "queue-flush": (["queue", "flush"], None),
    "check-explain": (["check", "--explain"], None),
    "test-text": (["test", "--stage", "data", "{world}/m.eml"], None),
    "test-json": (["test", "--stage", "data", "--json", "{world}/m.eml"], None),
    "hash-password": (["hash-password"], b"secret\n"),
    "help": (["--help"], None),
    "version": (["--version"], None),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_reader_gone_before_the_first_line_ends_the_command_quietly(world, name):
    args, stdin = COMMANDS[name]
    args = [a.format(world=world) for a in args]
    if name not in ("help", "version"):
        args += ["--config", world / "mailflow.toml"]
    code, err = run_with_reader_gone(args, 0, stdin)
    assert "panicked" not in err and "Broken pipe" not in err, err
    assert code == 0, (code, err)


@pytest.mark.parametrize("args", [["queue", "list"], ["queue", "list", "--json"]], ids=["table", "json"])
def test_head_3_on_a_long_listing(world, args):
    # More than a pipe buffer of output: the reader goes away in the middle of it.
    code, err = run_with_reader_gone([*args, "--config", world / "mailflow.toml"], 3)
    assert "panicked" not in err and "Broken pipe" not in err, err
    assert code == 0, (code, err)


def test_shell_pipeline_into_head(world):
    r = subprocess.run(
        f"set -o pipefail; '{BIN}' queue list --config '{world}/mailflow.toml' | head -3",
        shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert len(r.stdout.splitlines()) == 3


def test_a_closed_stderr_does_not_turn_an_error_into_a_panic(world):
    (world / "scripts" / "20-broken.rhai").write_text("fn data( {\n")
    read_end, write_end = os.pipe()
    os.close(read_end)
    proc = subprocess.run([str(BIN), "check", "--config", str(world / "mailflow.toml")],
                          stdout=subprocess.DEVNULL, stderr=write_end, timeout=60)
    os.close(write_end)
    assert proc.returncode == 1, "1 is the config-error status; a panic exits 101"


def test_queue_flush_shows_progress_on_a_terminal_only(world):
    import fcntl
    import pty
    import struct
    import termios

    config = world / "mailflow.toml"
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    proc = subprocess.Popen([str(BIN), "queue", "flush", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    screen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's last writer is gone
            break
        if not chunk:
            break
        screen += chunk
    os.close(master)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert out.decode() == f"{ENTRIES} queued message(s) will be retried now\n"
    text = screen.decode(errors="replace")
    assert "retrying [" in text and re.search(rf"\d+/{ENTRIES} \(", text), text[-500:]
    # Not a terminal: no progress, only the summary.
    r = mailflow("queue", "flush", "--config", config)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout == f"{ENTRIES} queued message(s) will be retried now\n"
