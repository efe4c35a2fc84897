"""MQTT transport: paho-mqtt v2 behind a small interface.

* The Last Will is set before connecting; ``on_connect`` publishes the node's retained messages
  and renews subscriptions, so both survive broker restarts.
* paho's own reconnect backoff (``reconnect_delay_set``) drives reconnection; there is no
  hand-rolled retry loop.
* While the broker is away, :meth:`MqttTransport.publish` keeps messages in a bounded buffer
  (oldest dropped and counted) and flushes it, in order, on reconnect.
* TLS (``mqtts://``) and username/password are options of the broker URL and constructor. The
  command lines take the password from a file or ``ADAPTIVE_MQTT_PASSWORD``, never from their
  arguments (:func:`broker_credentials`): every local user can read a command line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from adaptive.protocol.messages import Message

__all__ = ["PASSWORD_ENV", "BrokerAddress", "MqttTransport", "broker_credentials", "parse_broker_url"]

PASSWORD_ENV = "ADAPTIVE_MQTT_PASSWORD"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is and how to reach it.

    Attributes:
        host: Host name or address.
        port: TCP port.
        tls: Use TLS (``mqtts://``).
        username: User name, or None.
        password: Password, or None.
    """

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        """The URL without credentials."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse ``mqtt://[user[:pass]@]host[:port]`` or ``mqtts://…``.

    Raises:
        ValueError: With one line naming what is wrong.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"broker URL must start with mqtt:// or mqtts://, found '{url}'")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"broker URL has an invalid port: '{url}'") from None
    if not parts.hostname:
        raise ValueError(f"broker URL has no host: '{url}'")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"broker URL must be scheme://host:port only, found '{url}'")
    tls = parts.scheme == "mqtts"
    return BrokerAddress(
        host=parts.hostname, port=port or (8883 if tls else 1883), tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def broker_credentials(url: str, username: str | None = None, password_file: str | None = None,
                       environ: dict[str, str] | None = None) -> BrokerAddress:
    """The broker of a command line: ``url`` (no password in it), a user name, a password kept off it.

    The password is the first line of ``password_file``, or else ``$ADAPTIVE_MQTT_PASSWORD``; the
    user name is ``username`` or the URL's.

    Raises:
        ValueError: A password in the URL, an unreadable password file, a password without a user.
    """
    address = parse_broker_url(url)
    if address.password is not None:
        raise ValueError(f"the broker URL carries a password, which every local user can read on the command "
                         f"line; put it in --password-file or ${PASSWORD_ENV} instead")
    password = (environ if environ is not None else os.environ).get(PASSWORD_ENV) or None
    if password_file:
        path = Path(password_file)
        try:
            text = path.read_bytes()[:4096].decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
            raise ValueError(f"--password-file {password_file}: cannot read it ({why})") from None
        password = text.splitlines()[0] if text.strip() else None
        if password is None:
            raise ValueError(f"--password-file {password_file}: the file is empty (expected the password "
                             "on its first line)")
    user = username or address.username
    if password is not None and not user:
        raise ValueError("a broker password needs a user name (--username, or user@ in the broker URL)")
    return replace(address, username=user, password=password)


class MqttTransport:
    """One MQTT session with retained presence, subscriptions and a publish buffer.

    Args:
        address: The broker.
        client_id: MQTT client id (unique per broker).
        will: Last Will, published by the broker if this client vanishes.
        on_connect_messages: Called on every (re)connect; its messages (e.g. retained
            ``online`` status) are published first.
        subscriptions: ``(topic filter, qos)`` pairs renewed on every connect.
        on_message: Called as ``on_message(topic, payload)`` from paho's thread. It must not
            raise: exceptions are logged and the message is dropped.
        buffer_size: Messages kept while disconnected.
        ca_file: CA bundle for TLS (default: the system's).
        keepalive_s: MQTT keep-alive, s; the broker fires the Last Will after 1.5× this.
        on_disconnect: Called (paho's thread, no arguments) whenever the session drops, e.g. to
            :meth:`monitor.presence.Presence.disconnected`.
    """

    def __init__(self, address: BrokerAddress, client_id: str, *, will: Message | None = None,
                 on_connect_messages: Callable[[], Sequence[Message]] | None = None,
                 subscriptions: Sequence[tuple[str, int]] = (),
                 on_message: Callable[[str, bytes], None] | None = None,
                 buffer_size: int = 1000, ca_file: str | None = None, keepalive_s: int = 10,
                 on_disconnect: Callable[[], None] | None = None) -> None:
        self.address = address
        self.client_id = client_id
        self.will = will
        self.on_connect_messages = on_connect_messages
        self.subscriptions = list(subscriptions)
        self.on_message = on_message
        self.ca_file = ca_file
        self.keepalive_s = keepalive_s
        self.on_disconnect = on_disconnect
        self.dropped = 0
        self.connects = 0
        self.connected_at = 0.0  # time.time() of the newest successful connect
        self._buffer: deque[Message] = deque(maxlen=buffer_size)
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._subscribed = threading.Event()  # every subscription of the current session acked
        self._pending_subs: set[int] = set()
        self._client: mqtt.Client | None = None

    @property
    def connected(self) -> bool:
        """Whether the session is up."""
        return self._connected.is_set()

    def start(self, wait_s: float | None = 10.0) -> MqttTransport:
        """Connect and start paho's network thread.

        With ``wait_s``, the first connection attempt is made here and its failure raised; paho
        then keeps the session alive across broker restarts. With ``None``, connecting happens
        in the background (a node that boots before its broker).

        Raises:
            ConnectionError: The broker cannot be reached or refuses the session in time.
        """
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv311, clean_session=True)
        if self.address.username is not None:
            client.username_pw_set(self.address.username, self.address.password)
        if self.address.tls:
            client.tls_set(ca_certs=self.ca_file, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if self.will is not None:
            client.will_set(self.will.topic, self.will.payload, self.will.qos, self.will.retain)
        client.reconnect_delay_set(min_delay=1, max_delay=4)  # back within 4 s of a broker restart
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        if wait_s is None:
            client.connect_async(self.address.host, self.address.port, keepalive=self.keepalive_s)
            client.loop_start()
            return self
        try:
            client.connect(self.address.host, self.address.port, keepalive=self.keepalive_s)
        except (OSError, ssl.SSLError) as exc:
            self._client = None
            reason = getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__
            raise ConnectionError(f"cannot reach broker {self.address.url}: {reason}") from None
        client.loop_start()
        deadline = time.monotonic() + wait_s
        if not self._connected.wait(wait_s):
            self.close(graceful=False)
            raise ConnectionError(f"broker {self.address.url} did not accept the session within "
                                  f"{wait_s:g} s (credentials or TLS?)")
        # messages published after start() returns reach us: the broker has confirmed our topics
        if not self._subscribed.wait(max(deadline - time.monotonic(), 0.0)):
            self.close(graceful=False)
            raise ConnectionError(f"broker {self.address.url} did not confirm the subscriptions within "
                                  f"{wait_s:g} s (ACL?)")
        return self

    def publish(self, message: Message) -> bool:
        """Publish now if connected, else buffer. Returns whether it was handed to paho."""
        with self._lock:
            if not self._connected.is_set() or self._client is None:
                if len(self._buffer) == self._buffer.maxlen:
                    self.dropped += 1
                self._buffer.append(message)
                return False
            info = self._client.publish(message.topic, message.payload, message.qos, message.retain)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self._buffer.append(message)
                return False
            return True

    def close(self, final: Sequence[Message] = (), graceful: bool = True, timeout_s: float = 2.0) -> None:
        """Publish ``final`` (e.g. a retained ``offline`` status), then disconnect cleanly.

        A clean disconnect does not fire the Last Will, so ``final`` should say what it would.
        """
        client = self._client
        if client is None:
            return
        if graceful and self._connected.is_set():
            for msg in final:
                info = client.publish(msg.topic, msg.payload, msg.qos, msg.retain)
                with contextlib.suppress(RuntimeError, ValueError):
                    info.wait_for_publish(timeout=timeout_s)
        client.disconnect()
        client.loop_stop()
        self._connected.clear()
        self._client = None

    # paho callbacks (network thread)

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object,
                    reason_code: mqtt.ReasonCode, properties: object) -> None:
        if reason_code.is_failure:
            log.warning("broker %s refused the session: %s", self.address.url, reason_code)
            return
        self.connects += 1
        self.connected_at = time.time()
        self._subscribed.clear()
        self._pending_subs = set()
        for topic, qos in self.subscriptions:
            rc, mid = client.subscribe(topic, qos)
            if rc == mqtt.MQTT_ERR_SUCCESS and mid is not None:
                self._pending_subs.add(mid)
        if not self._pending_subs:
            self._subscribed.set()
        for msg in (self.on_connect_messages() if self.on_connect_messages else ()):
            client.publish(msg.topic, msg.payload, msg.qos, msg.retain)
        with self._lock:
            while self._buffer:
                msg = self._buffer.popleft()
                client.publish(msg.topic, msg.payload, msg.qos, msg.retain)
            self._connected.set()
        if self.connects > 1:
            log.info("reconnected to %s (connection %d, %d dropped while away)", self.address.url,
                     self.connects, self.dropped)

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reason_codes: object,
                      properties: object) -> None:
        self._pending_subs.discard(mid)
        if not self._pending_subs:
            self._subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object,
                       reason_code: mqtt.ReasonCode, properties: object) -> None:
        self._connected.clear()
        if self.on_disconnect is not None:
            try:
                self.on_disconnect()
            except Exception:  # a hook bug must not kill paho's network thread
                log.exception("on_disconnect hook failed")
        if reason_code.is_failure:
            log.warning("lost broker %s (%s); paho reconnects with backoff", self.address.url, reason_code)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if self.on_message is None:
            return
        try:
            self.on_message(msg.topic, msg.payload)
        except Exception:  # a handler bug must not kill paho's network thread
            log.exception("message handler failed on %s; message dropped", msg.topic)
