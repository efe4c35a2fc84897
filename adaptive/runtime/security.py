"""An authenticated, encrypted data plane: CurveZMQ keys in files, one key pair per node and client.

Every process of a secured cluster holds one key directory:

* ``<id>.key`` — the public key of every node and client allowed in (the authorised set);
* ``<id>.key_secret`` — its own key pair, and only its own (copy each secret to its owner alone).

Every socket that receives (a node's data socket, a client's result socket) is a CURVE server with its
owner's key pair, and a ZAP handler admits only the public keys found in the directory at start. Every
socket that sends is a CURVE client that pins the receiver's public key, ``<receiver id>.key``: a peer
without an authorised key never completes the handshake, so none of its frames reaches the node's
code, let alone a model stage. ``adaptive keys DIR ID...`` makes the files (:func:`generate`).

A key says who is speaking, and a frame may not claim otherwise: the ZAP handler names each
connection by its key's id (the ZeroMQ ``User-Id``), and :meth:`CurveKeys.check_sender` holds a
frame to it. A request entering the chain comes from the client it names; a request further down
comes from a node earlier in its own chain; a result or error comes from a node of its chain.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from adaptive.errors import AdaptiveError
from adaptive.protocol.messages import SchemaError, check_id
from adaptive.runtime.signing import write_private
from adaptive.runtime.wire import Frame

__all__ = ["CurveKeys", "generate"]

log = logging.getLogger(__name__)


def generate(directory: str | Path, ids: list[str], overwrite: bool = False) -> list[Path]:
    """Make a key pair per id in ``directory``; returns the secret files written.

    Raises:
        AdaptiveError: An invalid id, or a key that exists (without ``overwrite``).
    """
    if not ids:
        raise AdaptiveError("name at least one node or client id to make keys for")
    folder = Path(directory)
    for name in ids:
        try:
            check_id(name, "key id")
        except SchemaError as exc:
            raise AdaptiveError(str(exc)) from None
        if not overwrite and (folder / f"{name}.key").exists():
            raise AdaptiveError(f"key '{folder / name}.key' exists (pass --overwrite to replace it)")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in ids:
        public, secret = zmq.curve_keypair()
        _write_certificate(folder / f"{name}.key", public, None)
        _write_certificate(folder / f"{name}.key_secret", public, secret)
        written.append(folder / f"{name}.key_secret")
    return written


def _write_certificate(path: Path, public: bytes, secret: bytes | None) -> None:
    """A ZeroMQ certificate file (ZPL, as ``zmq.auth.load_certificate`` reads it), replaced atomically.

    A secret file is created 0600 from its first byte (never readable by others, not even until a
    chmod), in a temporary file renamed over ``path``.
    """
    lines = ["# ZeroMQ CURVE certificate, written by 'adaptive keys'", "metadata", "curve",
             f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    write_private(path, "\n".join(lines) + "\n", secret=secret is not None)


class CurveKeys:
    """One process's CURVE identity and the directory of authorised public keys.

    Args:
        directory: The key directory (see the module docstring).
        identity: This node's or client's id; ``<identity>.key_secret`` must be in ``directory``.

    Raises:
        AdaptiveError: A missing directory or secret key, or no ZeroMQ CURVE support.
    """

    def __init__(self, directory: str | Path, identity: str) -> None:
        self.directory = Path(directory)
        self.identity = identity
        if not zmq.has("curve"):
            raise AdaptiveError("this libzmq has no CURVE support; install pyzmq's wheels")
        secret_file = self.directory / f"{identity}.key_secret"
        if not secret_file.is_file():
            raise AdaptiveError(f"no secret key for '{identity}' in {self.directory} (expected "
                                f"{secret_file}; make one with: adaptive keys {self.directory} {identity})")
        try:
            self.public, secret = zmq.auth.load_certificate(str(secret_file))
        except (OSError, ValueError) as exc:
            raise AdaptiveError(f"cannot read key {secret_file}: {exc}") from None
        if secret is None:
            raise AdaptiveError(f"{secret_file} holds no secret key")
        self.secret: bytes = secret
        self.authorised = sorted(p.stem for p in self.directory.glob("*.key"))
        self._ids: dict[bytes, str] = {}  # z85 public key -> the id of its file
        for name in self.authorised:
            try:
                self._ids[zmq.auth.load_certificate(str(self.directory / f"{name}.key"))[0]] = name
            except (OSError, ValueError):
                log.warning("skipped unreadable public key %s.key in %s", name, self.directory)
        self._auth: ThreadAuthenticator | None = None

    def start_authenticator(self, context: zmq.Context) -> None:
        """Admit only the directory's public keys to this context's CURVE servers (a ZAP thread)."""
        auth = ThreadAuthenticator(context, log=logging.getLogger("adaptive.zap"))
        auth.start()
        auth.configure_curve(domain="*", location=str(self.directory))
        auth.curve_user_id = lambda key: self._ids.get(z85.encode(key), "")  # the key's id is the User-Id
        self._auth = auth

    def stop_authenticator(self) -> None:
        """Stop the ZAP thread (before the context is terminated)."""
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    @staticmethod
    def check_sender(part: zmq.Frame, frame: Frame, nodes: Collection[str] = ()) -> str:
        """Why ``frame``, received as ``part`` on a CURVE server, may not come from its sender ("" if it may).

        A ``work`` frame at hop 0 must come from the client it names, further on from a node before
        its hop (a piece of a parallel section: from the plan's first node, which alone sends them);
        a ``result`` or ``error`` from one of ``nodes`` (those that announced themselves).
        """
        try:
            sender = part.get("User-Id") or ""
        except (zmq.ZMQError, UnicodeDecodeError):
            sender = ""
        if frame.kind == "work" and frame.part is not None:  # a section's piece: only its source sends one
            ok = frame.hop > 0 and sender == frame.devices[0]
        elif frame.kind == "work":
            ok = sender == frame.client if frame.hop == 0 else sender in frame.devices[:frame.hop]
        else:
            ok = sender in nodes
        if ok:
            return ""
        return (f"a {frame.kind} frame at hop {frame.hop} claiming client '{frame.client[:64]}' came "
                f"from key '{sender or '?'}'")

    def serve(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE server with this identity (before it binds)."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def server_key(self, peer: str) -> bytes:
        """The pinned public key of ``peer``.

        Raises:
            AdaptiveError: ``peer`` has no ``.key`` in the directory.
        """
        path = self.directory / f"{peer}.key"
        try:
            check_id(peer, "peer")
            public, _ = zmq.auth.load_certificate(str(path))
        except (OSError, ValueError, SchemaError):
            raise AdaptiveError(f"no public key for peer '{peer}' in {self.directory}") from None
        return public

    def connect_to(self, sock: zmq.Socket, peer: str) -> None:
        """Make ``sock`` a CURVE client of ``peer`` (before it connects)."""
        sock.curve_serverkey = self.server_key(peer)
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
