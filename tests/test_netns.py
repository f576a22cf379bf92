"""tests/netns.py itself: two namespaces that reach each other and the root, removed after."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.netns import HostsLeftBehind, connects, link_names, netns_names, two_hosts


def test_two_hosts_reach_each_other_and_the_bridge_and_leave_nothing():
    with two_hosts() as net:
        made = {net.a.netns, net.b.netns}
        assert made <= netns_names() and net.bridge in link_names()
        assert net.a.ip != net.b.ip and net.gateway.rsplit(".", 1)[0] == net.a.ip.rsplit(".", 1)[0]
        with socket.socket() as root:  # a service of the root namespace, on the bridge only
            root.bind((net.gateway, 0))
            root.listen()
            port = root.getsockname()[1]
            assert connects(net.a, net.gateway, port) and connects(net.b, net.gateway, port)
            assert not connects(net.a, "127.0.0.1", port, timeout_s=1)  # its own lo, not ours
        listener = subprocess.Popen(net.b.command(sys.executable, "-c", (
            "import socket,sys; s=socket.socket(); s.bind(('0.0.0.0', 7777)); s.listen();"
            "print('up', flush=True); [s.accept()[0].close() for _ in range(2)]")),
            stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert listener.stdout and listener.stdout.readline().strip() == "up"
            assert net.b.pids() == [listener.pid]  # `ip netns exec` execs: the PID is the command's
            assert connects(net.a, net.b.ip, 7777)
            with socket.create_connection((net.b.ip, 7777), 5):  # and from the root namespace
                pass
        finally:
            listener.kill()
            listener.wait(5)
    assert not made & netns_names()
    assert not {net.bridge, f"st-va{net.bridge[5:]}", f"st-vb{net.bridge[5:]}"} & link_names()


def test_everything_is_removed_when_the_body_fails():
    with pytest.raises(OSError, match="the body failed"), two_hosts() as net:
        raise OSError("the body failed")
    assert not {net.a.netns, net.b.netns} & netns_names() and net.bridge not in link_names()


def test_a_process_left_in_a_namespace_is_reported_not_hidden():
    with pytest.raises(HostsLeftBehind, match="still runs"), two_hosts() as net:
        sleeper = subprocess.Popen(net.a.command("sleep", "30"))
    try:
        assert net.a.netns in netns_names()
    finally:
        sleeper.kill()
        sleeper.wait(5)
        subprocess.run(["ip", "netns", "del", net.a.netns], check=True)
    assert net.a.netns not in netns_names()
