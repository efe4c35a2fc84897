"""Ports for one-machine clusters come from below the kernel's ephemeral range, and are free."""

from __future__ import annotations

import socket

from adaptive.lab.ports import _ephemeral_start, free_port


def test_free_ports_are_free_and_never_ones_the_kernel_hands_out():
    ports = {free_port() for _ in range(50)}
    assert len(ports) > 40  # random, not one fixed port
    assert all(10_000 <= p < _ephemeral_start() for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports.pop()))  # still free
