"""Authority on the control plane: the controller signs plans and rules, nodes check them (Ed25519).

A broker account is not an authority: anyone who can publish on the plan or rule topic (a broker
without an ACL, a leaked password, a broker run by someone else) could steer every request. With
signing on, the controller holds an Ed25519 secret key and every node holds its public key; a node
refuses a plan or rule that is unsigned, signed by another key, or moved to another topic.

**Format.** A signed message is the JSON message with one more member, always the last:
``"sig":"ed25519:<86 characters, base64url without padding>"``. The signature covers
``adaptive/sig/v1``, the MQTT topic and the message's bytes *before* that member (closed with ``}``),
byte for byte: no canonical JSON is needed, and what is parsed is exactly what was signed. Tools
that ignore ``sig`` read a signed message like any other.

**Keys.** ``adaptive keys --sign DIR controller`` writes ``controller.ed25519`` (the secret key,
PKCS#8 PEM, mode 0600 from its first byte) and ``controller.ed25519.pub`` (SubjectPublicKeyInfo
PEM): ``adaptive controller --sign-key DIR/controller.ed25519`` and ``adaptive node
--controller-key DIR/controller.ed25519.pub``.
"""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from adaptive.errors import AdaptiveError
from adaptive.protocol.messages import SchemaError, check_id

__all__ = ["Signer", "Verifier", "generate_signing_key", "write_private"]

log = logging.getLogger(__name__)

_CONTEXT = b"adaptive/sig/v1\n"
_MARK = b',"sig":"ed25519:'
_SIG_CHARS = 86  # 64 bytes in base64url without padding


def write_private(path: Path, text: str, secret: bool) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed over it.

    A secret file is created 0600 from its first byte (never readable by others, not even until a
    chmod); a public one 0644.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def generate_signing_key(directory: str | Path, name: str, overwrite: bool = False) -> Path:
    """Write ``<name>.ed25519`` (secret) and ``<name>.ed25519.pub`` in ``directory``; the secret's path.

    Raises:
        AdaptiveError: An invalid name, or a key that exists (without ``overwrite``).
    """
    try:
        check_id(name, "key id")
    except SchemaError as exc:
        raise AdaptiveError(str(exc)) from None
    folder = Path(directory)
    secret_path, public_path = folder / f"{name}.ed25519", folder / f"{name}.ed25519.pub"
    if not overwrite and (secret_path.exists() or public_path.exists()):
        raise AdaptiveError(f"key '{secret_path}' exists (pass --overwrite to replace it)")
    folder.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    secret = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    write_private(secret_path, secret.decode(), secret=True)
    write_private(public_path, public.decode(), secret=False)
    return secret_path


def _read_pem(path: str | Path, what: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise AdaptiveError(f"{what} {p} is not a file")
    data = p.read_bytes()[:64 * 1024]
    if b"-----BEGIN" not in data:
        raise AdaptiveError(f"{what} {p} is not a PEM key (make one with: adaptive keys --sign DIR "
                            "controller)")
    return data


def _signed_bytes(topic: str, body: bytes) -> bytes:
    return _CONTEXT + topic.encode() + b"\n" + body


class Signer:
    """The controller's signing key (``<name>.ed25519``).

    Raises:
        AdaptiveError: The file is missing, not a PEM key, or not an Ed25519 secret key.
    """

    def __init__(self, path: str | Path) -> None:
        data = _read_pem(path, "signing key")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise AdaptiveError(f"signing key {path}: cannot read it ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise AdaptiveError(f"signing key {path}: expected an Ed25519 secret key")
        self._key = key
        self.path = Path(path)

    def sign(self, topic: str, body: bytes) -> bytes:
        """``body`` (a JSON object's bytes) with its signature for ``topic`` as the last member."""
        if not body.endswith(b"}") or len(body) < 3:
            raise ValueError("only a non-empty JSON object can be signed")
        sig = base64.urlsafe_b64encode(self._key.sign(_signed_bytes(topic, body))).rstrip(b"=")
        return body[:-1] + _MARK + sig + b'"}'


class Verifier:
    """What a node accepts as the controller's word.

    Args:
        path: The controller's public key (``<name>.ed25519.pub``); None for the unsigned lab mode,
            in which anything on the plan and rule topics is taken as the controller's.

    Raises:
        AdaptiveError: The file is missing, not a PEM key, or not an Ed25519 public key.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self._key: Ed25519PublicKey | None = None
        if path is not None:
            data = _read_pem(path, "controller key")
            try:
                key = serialization.load_pem_public_key(data)
            except (ValueError, TypeError) as exc:
                raise AdaptiveError(f"controller key {path}: cannot read it ({exc})") from None
            if not isinstance(key, Ed25519PublicKey):
                raise AdaptiveError(f"controller key {path}: expected an Ed25519 public key")
            self._key = key

    @property
    def required(self) -> bool:
        """Signatures are checked (a controller key was given)."""
        return self._key is not None

    def open(self, topic: str, payload: bytes) -> bytes:
        """The signed body of ``payload`` received on ``topic``.

        In lab mode a signature, if any, is stripped unchecked.

        Raises:
            SchemaError: Unsigned, malformed or wrong signature (with a key).
        """
        at = payload.rfind(_MARK)
        if at < 0:
            if self._key is not None:
                raise SchemaError("unsigned: this node takes plans and rules only signed by the "
                                  "controller's key")
            return payload
        sig = payload[at + len(_MARK):]
        if not sig.endswith(b'"}') or len(sig) != _SIG_CHARS + 2:
            raise SchemaError("field 'sig': expected ed25519:<86 base64url characters> as the last member")
        body = payload[:at] + b"}"
        if self._key is None:
            return body
        try:
            raw = base64.urlsafe_b64decode(sig[:-2] + b"==")
            self._key.verify(raw, _signed_bytes(topic, body))
        except (ValueError, InvalidSignature):
            raise SchemaError("bad signature: not signed by the controller's key for this topic") from None
        return body
