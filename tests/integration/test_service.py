"""Running under systemd: the unit in contrib/ passes `systemd-analyze verify`, the daemon
sends READY=1 once it listens (RELOADING/READY around SIGHUP, STOPPING at the end) to a
NOTIFY_SOCKET the test owns, and it raises its open-files limit so that clients past
`max_connections` get 421 instead of hanging."""

import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import BIN, REPO, Daemon, free_port, make_config, wait_for, wait_port

UNIT = REPO / "contrib" / "mailflow.service"


def unit_settings():
    settings = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_the_unit_has_the_sandboxing_and_readiness_settings():
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert s["ProtectSystem"] == ["strict"]
    assert "/var/lib/mailflow" in s["ReadWritePaths"]
    assert s["NoNewPrivileges"] == ["true"]
    assert s["PrivateTmp"] == ["true"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert int(s["LimitNOFILE"][0]) >= 4096
    # Binding port 25 is opt-in: the capability lines are there, commented out.
    assert "AmbientCapabilities" not in s
    assert "#AmbientCapabilities=CAP_NET_BIND_SERVICE" in UNIT.read_text()


@pytest.mark.parametrize("port25", [False, True], ids=["as-shipped", "port-25-lines-uncommented"])
def test_systemd_analyze_verify_accepts_the_unit(tmp_path, port25):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("NOT RUN: systemd-analyze missing (test.sh installs the systemd package)")
    # verify checks that ExecStart exists: point it at the binary under test.
    text = UNIT.read_text().replace("/usr/local/bin/mailflow", str(BIN.resolve()))
    if port25:
        text = text.replace("#CapabilityBoundingSet=CAP", "CapabilityBoundingSet=CAP")
        text = text.replace("#AmbientCapabilities=", "AmbientCapabilities=")
        assert "\nAmbientCapabilities=CAP_NET_BIND_SERVICE\n" in text
    unit = tmp_path / "mailflow.service"
    unit.write_text(text)
    run = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # A misspelt key or value is only a warning (exit 0): any output is a failure.
    assert run.returncode == 0 and run.stdout + run.stderr == "", run.stdout + run.stderr


def start(d: Daemon, env=None, preexec_fn=None):
    """Daemon.start with a chosen environment and a hook run in the child before exec."""
    full_env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    full_env["RUST_LOG"] = "info"
    full_env.update(env or {})
    d.log_file = open(d.log_path, "ab")
    d.proc = subprocess.Popen(
        [str(BIN), "run", "--config", str(d.config_path)],
        cwd=d.root, stdout=d.log_file, stderr=subprocess.STDOUT, env=full_env, preexec_fn=preexec_fn,
    )
    return d


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(15)
    yield path, sock
    sock.close()


def states(sock):
    """The `KEY=VALUE` lines of the next datagram."""
    return sock.recv(4096).decode().splitlines()


def test_ready_is_sent_once_listening_and_reload_and_stop_are_reported(tmp_path, notify_socket):
    path, sock = notify_socket
    port = free_port()
    d = Daemon(tmp_path, make_config(port), {}, port)
    start(d, env={"NOTIFY_SOCKET": str(path)})
    try:
        assert states(sock) == ["READY=1"]
        # READY means listening: the port answers at once, without waiting.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            assert client.recv(512).startswith(b"220 ")
        # The log writer thread writes the line; it may land just after READY.
        assert wait_for(lambda: "mailflow running" in d.log()), d.log()

        d.reload()
        reloading = states(sock)
        assert reloading[0] == "RELOADING=1", reloading
        assert re.fullmatch(r"MONOTONIC_USEC=\d+", reloading[1]), reloading
        assert states(sock) == ["READY=1"]
        assert wait_for(lambda: "config reloaded" in d.log())

        d.proc.send_signal(signal.SIGTERM)
        assert states(sock) == ["STOPPING=1"]
        assert d.proc.wait(timeout=20) == 0
    finally:
        d.stop(signal.SIGKILL)


def test_no_notify_socket_no_notification_and_a_dead_socket_is_not_fatal(tmp_path):
    port = free_port()
    d = Daemon(tmp_path, make_config(port), {}, port)
    # A path nobody listens on: the daemon warns and runs on.
    start(d, env={"NOTIFY_SOCKET": str(tmp_path / "nobody.sock")})
    try:
        wait_port(port, proc=d.proc)
        assert wait_for(lambda: "cannot notify systemd" in d.log()), d.log()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            assert client.recv(512).startswith(b"220 ")
    finally:
        assert d.stop() == 0


def limited(soft, hard):
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_low_soft_file_limit_is_raised_and_clients_past_max_connections_get_421(tmp_path):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1024:
        pytest.skip(f"NOT RUN: hard open-files limit {hard} too low for this test")
    # Enough descriptors in this process for the clients.
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    port = free_port()
    max_connections = 300
    d = Daemon(tmp_path, make_config(port, extra_smtp=f"max_connections = {max_connections}"), {}, port)
    start(d, preexec_fn=limited(256, hard))
    clients = []
    try:
        wait_port(port, proc=d.proc)
        d._check_it_is_ours()
        # 256 was the soft limit: past it, without the raise, these would wait unanswered.
        for _ in range(max_connections + 10):
            c = socket.create_connection(("127.0.0.1", port), timeout=15)
            clients.append(c)
        codes = []
        for c in clients:
            codes.append(c.recv(512)[:3])
        assert codes.count(b"220") == max_connections, codes
        assert codes.count(b"421") == 10, codes
        figure = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
        line = next(l for l in d.log().splitlines() if "open files limit" in l)
        assert "raised to the hard limit" in line and "was=256" in line, line
        if figure != "unlimited":
            assert f"limit={figure}" in line, line
        assert "open files limit below" not in d.log()
    finally:
        for c in clients:
            c.close()
        d.stop(signal.SIGKILL)


def test_a_hard_file_limit_below_the_need_is_logged_with_a_warning(tmp_path):
    port = free_port()
    d = Daemon(tmp_path, make_config(port, extra_smtp="max_connections = 1000"), {}, port)
    start(d, preexec_fn=limited(200, 200))
    try:
        wait_port(port, proc=d.proc)
        d._check_it_is_ours()
        log = d.log()
        assert re.search(r"open files limit limit=200\b", log), log
        warning = next(l for l in log.splitlines() if "open files limit below" in l)
        assert "WARN" in warning and "limit=200" in warning and "max_connections=1000" in warning, warning
    finally:
        assert d.stop() == 0
