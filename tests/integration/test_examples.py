"""Every folder in examples/ (issue #3): its mailflow.toml is valid and its scripts compile
(`mailflow check`), and `mailflow test` on each sample .eml gives what its expect.json says.
Plus the top-level default scripts folder, which must do no harm.

expect.json:

    {"cases": [{"eml": "mail/x.eml", "stage": "data", "from": "a@b", "to": ["c@d"],
                "remote_ip": "...", "helo": "...",              # optional
                "verdict": "accept", "reply": "550 5.7.1 ...",   # reply only for refusals
                "decided_by": "10-x.rhai" | null,                # optional
                "actions": [{"action": "file_into", "folder": "X"}],  # "value_pattern": a regex
                                                                     # for "value"
                "logs": ["10-x.rhai: text"],                     # optional
                "runs": [{"rcpt": ..., "verdict": ..., ...}],    # rcpt_to: one per --to, instead
                "recipients": [...], "subject": "...",           # optional, after the edits
                "headers_absent": ["X-Foo"]}]}                   # optional
    "mailbox": "Junk"                                   # optional, `fetched`: ctx.mailbox

An expect.json with `"scanner": "rspamd"` runs its cases against a private rspamd
(tests/integration/scanners.py): the example is copied and its `url`/`controller_url` pointed
at it.
"""

import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import REPO
from smtpclient import make_message, mailflow, parse, transaction, wait_delivered

EXAMPLES = REPO / "examples"
EXAMPLE_DIRS = sorted(p for p in EXAMPLES.iterdir() if p.is_dir()) if EXAMPLES.is_dir() else []


def test_there_are_examples():
    names = {p.name for p in EXAMPLE_DIRS}
    assert {"personal-filter", "spam-gate", "rewrite"} <= names


def cases_of(example):
    expect = example / "expect.json"
    assert expect.is_file(), f"{example.name} has no expect.json"
    return json.loads(expect.read_text())["cases"]


@pytest.mark.parametrize("example", EXAMPLE_DIRS, ids=lambda p: p.name)
def test_example_layout_and_check(example):
    assert (example / "mailflow.toml").is_file()
    scripts = example / "scripts"
    assert scripts.is_dir() and list(scripts.glob("*.rhai")), "no scripts"
    emls = sorted(example.rglob("*.eml"))
    assert emls, "no sample .eml files"
    # Every sample message is exercised by at least one case.
    used = {(example / c["eml"]).resolve() for c in cases_of(example)}
    assert {e.resolve() for e in emls} <= used, "sample messages without an expectation"
    r = mailflow("check", "--config", example / "mailflow.toml")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok: ")
    # Every comment-documented file is listed (nothing silently skipped).
    for script in scripts.glob("*.rhai"):
        assert script.name in r.stdout


@pytest.fixture(scope="module")
def scanners():
    """Private scanners, started on first use and stopped when the module is done."""
    started = {}

    def get(name):
        if name not in started:
            from scanners import Rspamd

            assert name == "rspamd", f"unknown scanner {name!r}"
            started[name] = Rspamd()
        return started[name]

    yield get
    for scanner in started.values():
        scanner.stop()


def with_scanner(example, scanner, tmp_path):
    """A copy of `example` whose rspamd URLs point at `scanner`."""
    copy = tmp_path / example.name
    shutil.copytree(example, copy)
    config = copy / "mailflow.toml"
    text = re.sub(r'(?m)^url = "[^"]*"', f'url = "{scanner.url}"', config.read_text())
    text = re.sub(r'(?m)^controller_url = "[^"]*"', f'controller_url = "{scanner.controller_url}"', text)
    config.write_text(text)
    return copy


def run_case(example, case):
    args = ["test", "--config", example / "mailflow.toml", "--stage", case["stage"], "--json"]
    if "mailbox" in case:
        args += ["--mailbox", case["mailbox"]]
    if "from" in case:
        args += ["--from", case["from"]]
    for rcpt in case.get("to", []):
        args += ["--to", rcpt]
    if "remote_ip" in case:
        args += ["--remote-ip", case["remote_ip"]]
    if "helo" in case:
        args += ["--helo", case["helo"]]
    args.append(example / case["eml"])
    r = mailflow(*args)
    assert r.returncode == 0, (case, r.stdout, r.stderr)
    return json.loads(r.stdout)


def assert_run(run, expected, where):
    assert run["error"] is None, (where, run["error"])
    assert run["verdict"] == expected["verdict"], where
    assert len(run["actions"]) == len(expected["actions"]), (where, run["actions"])
    for got, want in zip(run["actions"], expected["actions"]):
        want = dict(want)
        pattern = want.pop("value_pattern", None)
        if pattern is not None:
            # A scanner's score or symbol list: the shape is the example's, the numbers rspamd's.
            assert re.fullmatch(pattern, got.pop("value", "")), (where, pattern, got)
        assert got == want, where
    if "reply" in expected:
        assert run.get("reply") == expected["reply"], where
    if "decided_by" in expected:
        assert run["decided_by"] == expected["decided_by"], where
    if "logs" in expected:
        assert run["logs"] == expected["logs"], where
    if "rcpt" in expected:
        assert run["rcpt"] == expected["rcpt"], where


def all_cases():
    for example in EXAMPLE_DIRS:
        for i, case in enumerate(cases_of(example)):
            yield pytest.param(example, case, id=f"{example.name}-{i}-{Path(case['eml']).stem}-{case['stage']}")


@pytest.mark.parametrize("example, case", list(all_cases()))
def test_example_case(example, case, scanners, tmp_path):
    scanner = json.loads((example / "expect.json").read_text()).get("scanner")
    if scanner:
        example = with_scanner(example, scanners(scanner), tmp_path)
    report = run_case(example, case)
    assert report["stage"] == case["stage"]
    expected_runs = case.get("runs", [case])
    assert len(report["runs"]) == len(expected_runs)
    for n, (run, expected) in enumerate(zip(report["runs"], expected_runs)):
        assert_run(run, expected, f"{case['eml']} run {n}")
    if "recipients" in case:
        assert report["recipients"] == case["recipients"]
    if "subject" in case:
        assert report["subject"] == case["subject"]
    names = [name.lower() for name, _ in report["headers"]]
    for absent in case.get("headers_absent", []):
        assert absent.lower() not in names


def test_personal_filter_in_the_daemon(daemon):
    """The personal-filter scripts, run by the daemon: each sample lands in its folder."""
    example = EXAMPLES / "personal-filter"
    d = daemon(start=False)
    shutil.rmtree(d.scripts_dir)
    shutil.copytree(example / "scripts", d.scripts_dir)
    d.start()
    expected = {
        "rust-list.eml": ("Lists/rust-users", ""),
        "newsletter.eml": ("Newsletters", "S"),
        "invoice.eml": ("Invoices", "F"),
        "personal.eml": (None, ""),
    }
    for name in expected:
        text = (example / "mail" / name).read_text()
        out = transaction(d.port, "sender@remote.example", ["me@example.org"], text)
        assert out["data"].code == 250, (name, out["data"])
    for name, (folder, flags) in expected.items():
        files = wait_delivered(d, "me@example.org", folder=folder)
        subjects = {parse(f)["Subject"]: f for f in files}
        subject = parse(example / "mail" / name)["Subject"]
        assert subject in subjects, (name, folder, list(subjects))
        path = subjects[subject]
        if flags:
            assert path.name.endswith(":2," + flags), path.name
        else:
            assert path.parent.name == "new"


# --- the top-level default scripts folder ---------------------------------------------------


def test_default_scripts_compile_from_the_repo_root():
    assert list((REPO / "scripts").glob("*.rhai")), "scripts/ holds no default script"
    r = mailflow("check", cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "built-in defaults" in r.stdout or "mailflow.toml" in r.stdout
    assert "00-default.rhai" in r.stdout


def test_default_scripts_decide_nothing(tmp_path):
    (tmp_path / "m.eml").write_text(make_message())
    for stage in ["connect", "helo", "mail_from", "rcpt_to", "data"]:
        r = mailflow("test", "--stage", stage, "--from", "a@remote.example", "--to", "me@localhost",
                     "--json", tmp_path / "m.eml", cwd=REPO)
        assert r.returncode == 0, r.stderr
        for run in json.loads(r.stdout)["runs"]:
            assert run["verdict"] == "accept" and run["decided_by"] is None and run["actions"] == []


def test_default_scripts_accept_mail(daemon):
    d = daemon(start=False)
    for script in (REPO / "scripts").glob("*.rhai"):
        shutil.copy(script, d.scripts_dir / script.name)
    d.start()
    out = transaction(d.port, "a@remote.example", ["me@example.org"], make_message(subject="default set"))
    assert out["data"].code == 250
    files = wait_delivered(d, "me@example.org")
    assert [parse(f)["Subject"] for f in files] == ["default set"]
