"""Real MQTT brokers for integration tests: Mosquitto (when installed) and the embedded amqtt one.

Shared by every test folder; the ``broker`` fixture over both kinds is in ``tests/conftest.py``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from adaptive.lab.ports import free_port, wait_port


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
