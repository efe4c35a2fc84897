"""Real MQTT brokers for integration tests: Mosquitto (when installed) and the embedded amqtt one.

Shared by every test folder; the ``broker`` fixture over both kinds is in ``tests/conftest.py``.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from adaptive.lab.ports import free_port


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


class Mosquitto:
    """A Mosquitto 2.x process on a fixed port that can be stopped and restarted."""

    def __init__(self, tmp: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.conf = tmp / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


class Embedded:
    """The embedded amqtt broker, restartable on the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.broker = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Embedded:
        from adaptive.lab.broker import EmbeddedBroker

        self.broker = EmbeddedBroker("127.0.0.1", self.port).start()
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.broker is not None:
            self.broker.close()
            self.broker = None
