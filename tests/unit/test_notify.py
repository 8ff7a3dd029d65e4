"""eoe_filter.notify against a NOTIFY_SOCKET made by the test, as systemd would provide."""

from __future__ import annotations

import logging
import os
import socket
import uuid

import pytest

from eoe_filter.notify import Notifier


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2.0)
    return sock


@pytest.fixture(params=["path", "abstract"])
def supervisor(request, tmp_path):
    """Yield (env value of NOTIFY_SOCKET, bound receiving socket)."""
    if request.param == "path":
        env_value = str(tmp_path / "notify.sock")
        bind_addr = env_value
    else:
        name = f"eoe_filter-test-{uuid.uuid4().hex}"
        env_value = "@" + name
        bind_addr = "\0" + name
    sock = _receiver(bind_addr)
    yield env_value, sock
    sock.close()


def _assert_nothing_queued(sock: socket.socket) -> None:
    timeout = sock.gettimeout()
    sock.setblocking(False)  # with a timeout, Python would wait and raise TimeoutError
    try:
        with pytest.raises(BlockingIOError):
            sock.recv(4096)
    finally:
        sock.settimeout(timeout)


def test_exact_datagrams(supervisor):
    env_value, sock = supervisor
    n = Notifier.from_env({"NOTIFY_SOCKET": env_value})
    assert n.enabled
    assert n.ready() is True
    assert n.status("forwarding eth0 <-> tap-fwd") is True
    assert n.watchdog() is True
    assert n.stopping() is True
    got = [sock.recv(4096) for _ in range(4)]
    assert got == [
        b"READY=1",
        b"STATUS=forwarding eth0 <-> tap-fwd",
        b"WATCHDOG=1",
        b"STOPPING=1",
    ]
    _assert_nothing_queued(sock)
    n.close()


def test_status_cannot_inject_fields(supervisor):
    env_value, sock = supervisor
    n = Notifier.from_env({"NOTIFY_SOCKET": env_value})
    n.status("line one\nREADY=1\r\nx\0y")
    assert sock.recv(4096) == b"STATUS=line one READY=1 x y"
    n.status("café ✓")
    assert sock.recv(4096) == "STATUS=café ✓".encode()


def test_from_real_environment(supervisor, monkeypatch):
    env_value, sock = supervisor
    monkeypatch.setenv("NOTIFY_SOCKET", env_value)
    Notifier.from_env().ready()
    assert sock.recv(4096) == b"READY=1"


def test_one_socket_kept_open(supervisor):
    env_value, sock = supervisor
    n = Notifier.from_env({"NOTIFY_SOCKET": env_value})
    first = n._sock
    for _ in range(3):
        n.watchdog()
    assert n._sock is first and first.fileno() >= 0
    assert [sock.recv(4096) for _ in range(3)] == [b"WATCHDOG=1"] * 3


def test_without_notify_socket_nothing_sent_nothing_raised(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    for n in (Notifier.from_env(), Notifier.from_env({}), Notifier.from_env({"NOTIFY_SOCKET": ""})):
        assert not n.enabled
        assert n._sock is None  # no socket was even created
        assert n.ready() is False
        assert n.status("x") is False
        assert n.watchdog() is False
        assert n.stopping() is False
        assert n.watchdog_interval() is None
        n.close()


def test_unsupported_address_is_disabled():
    for value in ("relative/path.sock", "vsock:2:1234"):
        n = Notifier.from_env({"NOTIFY_SOCKET": value})
        assert not n.enabled
        assert n.ready() is False


def test_vanished_socket_does_not_raise_and_logs_once(tmp_path, caplog):
    path = tmp_path / "gone.sock"
    sock = _receiver(str(path))
    n = Notifier.from_env({"NOTIFY_SOCKET": str(path)})
    assert n.ready() is True
    assert sock.recv(4096) == b"READY=1"
    sock.close()  # supervisor died: ECONNREFUSED
    with caplog.at_level(logging.DEBUG, logger="eoe_filter.notify"):
        assert n.watchdog() is False
        path.unlink()  # and its socket file is gone: ENOENT
        assert n.watchdog() is False
        assert n.stopping() is False
    records = [r for r in caplog.records if r.name == "eoe_filter.notify"]
    assert len(records) == 1
    assert records[0].levelno == logging.DEBUG


def test_abstract_socket_without_listener_does_not_raise():
    n = Notifier.from_env({"NOTIFY_SOCKET": f"@eoe_filter-none-{uuid.uuid4().hex}"})
    assert n.ready() is False
    assert n.status("still here") is False


def test_recreated_supervisor_socket_is_found_again(tmp_path):
    path = tmp_path / "notify.sock"
    first = _receiver(str(path))
    n = Notifier.from_env({"NOTIFY_SOCKET": str(path)})
    n.ready()
    assert first.recv(4096) == b"READY=1"
    first.close()
    path.unlink()
    second = _receiver(str(path))
    assert n.watchdog() is True
    assert second.recv(4096) == b"WATCHDOG=1"
    second.close()


def test_full_supervisor_queue_does_not_block(tmp_path):
    path = tmp_path / "stuck.sock"
    sock = _receiver(str(path))
    n = Notifier.from_env({"NOTIFY_SOCKET": str(path)})
    results = [n.watchdog() for _ in range(5000)]  # nobody reads: the queue fills up
    assert results[0] is True
    assert results[-1] is False  # EAGAIN, reported as False and not waited on
    sock.close()


def test_forked_child_stays_silent(supervisor):
    env_value, sock = supervisor
    n = Notifier.from_env({"NOTIFY_SOCKET": env_value, "WATCHDOG_USEC": "10000000"})
    pid = os.fork()
    if pid == 0:  # child: must not talk to the supervisor
        ok = not n.enabled and n.ready() is False and n.watchdog_interval() is None
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    _assert_nothing_queued(sock)
    assert n.ready() is True
    assert sock.recv(4096) == b"READY=1"


# --- WATCHDOG_USEC / WATCHDOG_PID ------------------------------------------------


def _interval(tmp_path, **env):
    sock = _receiver(str(tmp_path / "wd.sock"))
    try:
        return Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "wd.sock"), **env}).watchdog_interval()
    finally:
        sock.close()


@pytest.mark.parametrize(
    "usec, expected",
    [
        ("10000000", 5.0),  # WatchdogSec=10s -> ping every 5 s
        ("3000000", 1.5),
        ("1", 0.0000005),
    ],
)
def test_watchdog_interval_is_half_of_usec(tmp_path, usec, expected):
    assert _interval(tmp_path, WATCHDOG_USEC=usec) == pytest.approx(expected)


def test_watchdog_pid_ours(tmp_path):
    assert _interval(tmp_path, WATCHDOG_USEC="2000000", WATCHDOG_PID=str(os.getpid())) == 1.0


@pytest.mark.parametrize("pid", [str(os.getpid() + 1), "1", "abc", "-1"])
def test_watchdog_pid_not_ours(tmp_path, pid):
    assert _interval(tmp_path, WATCHDOG_USEC="2000000", WATCHDOG_PID=pid) is None


@pytest.mark.parametrize(
    "usec",
    [None, "", "0", "-5", "abc", "1.5", " 5", "+5", "1_000", str(2**64 - 1)],
)
def test_watchdog_usec_invalid_or_off(tmp_path, usec):
    env = {} if usec is None else {"WATCHDOG_USEC": usec}
    assert _interval(tmp_path, **env) is None


def test_watchdog_interval_none_without_socket():
    assert Notifier.from_env({"WATCHDOG_USEC": "10000000"}).watchdog_interval() is None
