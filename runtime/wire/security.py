"""Socket security: address checks (loopback unless opened), CURVE keys and ZAP authentication.

Servers (``s2i-serve``, ``s2i-stream``) bind loopback by default. Binding another address is
the user's explicit choice; without CURVE it is logged as a warning. With CURVE
(``--curve-secret``), pyzmq's ``zmq.auth.ThreadAuthenticator`` (ZAP) admits only clients whose
public key file is in the allowed folder of that socket: ``--allow-subscribers`` for the image
PUB socket, ``--allow-nodes`` for the audio PULL socket. Clients (``s2i-view``,
``s2i-capture``, ``runtime.wire.client.Subscriber``) take their own key pair and the server's public
key. Key pairs come from ``s2i-keys`` (``runtime/apps/keys.py``). A failed handshake (plaintext
against CURVE, an unknown key, a wrong server key) is seen through socket monitor events and
reported as one line by ``HandshakeWatch``; ``runtime.wire.client.ClientSocket`` raises it, or
(``--retry``) re-creates the socket with backoff, since libzmq never retries a refusal.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from runtime.cli import log
from runtime.config import switch
from runtime.errors import S2IError
from runtime.resilience import SocketMonitor

SUBSCRIBERS_DOMAIN = "s2i-subscribers"   # ZAP domain of the image PUB socket
NODES_DOMAIN = "s2i-nodes"               # ZAP domain of the audio PULL socket
TCP_ADDRESS = re.compile(r"^tcp://(?P<host>\[[^\]]*\]|[^:/]*):(?P<port>[^:/]*)$")


# --- addresses ------------------------------------------------------------------------------

def check_address(address: str, what: str) -> str:
    """``address`` if it is a usable ZeroMQ endpoint, else a one-line error.

    TCP ports must be 1-65535 or ``*`` (an explicit "any free port"); libzmq would otherwise
    bind a random port for a port such as 99999.
    """
    if not isinstance(address, str) or "://" not in address:
        raise S2IError(f"{what} address {address!r} is not a ZeroMQ endpoint "
                       "(expected e.g. tcp://127.0.0.1:5556)")
    scheme = address.split("://", 1)[0]
    if scheme in ("ipc", "inproc"):
        return address
    match = TCP_ADDRESS.match(address)
    if scheme != "tcp" or match is None or not match.group("host"):
        raise S2IError(f"{what} address {address!r} is not tcp://HOST:PORT "
                       "(expected e.g. tcp://127.0.0.1:5556)")
    port = match.group("port")
    if port != "*" and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise S2IError(f"{what} address {address!r} has port {port!r}; expected 1-65535 "
                       "(or * for any free port)")
    return address


def is_loopback(address: str) -> bool:
    """Whether an endpoint is reachable only from this machine (loopback, ipc, inproc)."""
    if address.startswith(("ipc://", "inproc://")):
        return True
    match = TCP_ADDRESS.match(address)
    if match is None:
        return False
    host = match.group("host").strip("[]")
    if host in ("localhost", "lo"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False      # "*", an interface name or a host name: reachable from outside


def warn_if_open(address: str, what: str, curve: bool, bound: bool = True) -> None:
    """Log a warning when ``address`` leaves this machine without CURVE."""
    if curve or is_loopback(address):
        return
    if bound:
        log(f"warning: the {what} socket {address} is open to the network without CURVE: "
            "anyone who can reach it can connect (see docs/PROTOCOL.md, Security)")
    else:
        log(f"warning: {what} to {address} travels unencrypted and unauthenticated "
            "(see docs/PROTOCOL.md, Security)")


# --- keys -----------------------------------------------------------------------------------

def _check_key(key: bytes | None, path: Path, what: str, which: str) -> bytes:
    """A CURVE key as 40 Z85 characters (32 bytes), else one line naming the file."""
    try:
        if key is not None and len(key) == 40 and len(z85.decode(key)) == 32:
            return key
    except (ValueError, KeyError, TypeError, IndexError):
        pass
    shown = "none" if key is None else f"{len(key)} characters"
    raise S2IError(f"{what} key file {path}: its {which} key should be 40 Z85 characters, "
                   f"got {shown} (make key pairs with s2i-keys)")


def _read_certificate(path: str | Path, what: str) -> tuple[bytes, bytes | None]:
    path = Path(path)
    if not path.is_file():
        raise S2IError(f"{what} key file {path} not found (make key pairs with s2i-keys)")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise S2IError(f"{what} key file {path} is not a ZeroMQ certificate: "
                       f"{str(exc)[:100]}") from exc
    return _check_key(public, path, what, "public"), secret


def load_secret(path: str | Path, what: str) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ``.key_secret`` file that only its owner can read."""
    public, secret = _read_certificate(path, what)
    if not secret:
        raise S2IError(f"{what} key file {path} holds no secret key; give the .key_secret "
                       "file made by s2i-keys")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if os.name == "posix" and mode & 0o077:
        raise S2IError(f"{what} key file {path} is readable by other users (mode "
                       f"{mode:04o}); run `chmod 600 {path}` (s2i-keys writes it so)")
    return public, _check_key(secret, Path(path), what, "secret")


def load_public(path: str | Path, what: str) -> bytes:
    """The Z85 public key from a ``.key`` (or ``.key_secret``) file."""
    return _read_certificate(path, what)[0]


class AllowedKeys:
    """The public keys of a folder's ``*.key`` files (read at start), as pyzmq's ZAP
    credentials provider. A broken file is skipped with a warning naming it: it costs only
    the client it was for, not every client."""

    def __init__(self, path: str | Path, what: str) -> None:
        folder = Path(path)
        if not folder.is_dir():
            raise S2IError(f"allowed {what} folder {folder} not found (expected a folder of "
                           "public .key files made by s2i-keys)")
        self.keys: set[bytes] = set()
        for file in sorted(folder.glob("*.key")):
            try:
                self.keys.add(load_public(file, f"allowed {what}"))
            except S2IError as exc:
                log(f"warning: skipping {file}: {exc}")
        if not self.keys:
            log(f"warning: allowed {what} folder {folder} holds no usable .key file: nobody "
                "can connect")

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


# --- servers --------------------------------------------------------------------------------

class ServerSecurity:
    """CURVE server keys plus one ZAP authenticator per context, one domain per socket."""

    def __init__(self, ctx: zmq.Context, secret_file: str | Path,
                 allowed: dict[str, str | Path]) -> None:
        self.public, self.secret = load_secret(secret_file, "server secret")
        self.allowed = {domain: Path(path) for domain, path in allowed.items()}
        self.providers = {domain: AllowedKeys(path, domain.removeprefix("s2i-"))
                          for domain, path in self.allowed.items()}
        self.auth = ThreadAuthenticator(ctx)
        self.auth.start()
        for domain, provider in self.providers.items():
            self.auth.configure_curve_callback(domain=domain, credentials_provider=provider)
        self.domains = set(self.providers)

    def reload(self) -> None:
        """Read the allowed-keys folders again: keys added or removed since the start count
        from the next handshake."""
        for domain, provider in self.providers.items():
            provider.keys = AllowedKeys(self.allowed[domain], domain.removeprefix("s2i-")).keys

    def secure(self, socket: zmq.Socket, domain: str) -> None:
        """Make ``socket`` a CURVE server checked against ``domain``'s allowed keys
        (call before bind)."""
        if domain not in self.domains:
            raise S2IError(f"no allowed-keys folder was given for {domain}")
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True
        socket.zap_domain = domain.encode()

    def close(self) -> None:
        self.auth.stop()


SECURITY_TITLE = "security (CURVE; see docs/PROTOCOL.md)"


@dataclass
class ServerCurve:
    """A server's CURVE flags (``s2i-stream``'s group; ``s2i-serve`` adds ``--allow-nodes``)."""

    curve_secret: str | None = field(default=None, metadata={
        "metavar": "FILE", "help": "this server's secret key file (NAME.key_secret from "
                                   "s2i-keys); turns on CURVE encryption and authentication"})
    allow_subscribers: str | None = field(default=None, metadata={
        "metavar": "DIR",
        "help": "folder of public .key files of the subscribers allowed on --pub"})

    def allowed(self) -> dict[str, tuple[str | None, str]]:
        """ZAP domain -> (allowed-keys folder, its flag)."""
        return {SUBSCRIBERS_DOMAIN: (self.allow_subscribers, "--allow-subscribers")}

    def open(self, ctx: zmq.Context) -> ServerSecurity | None:
        """The CURVE set-up these flags ask for (None without ``--curve-secret``)."""
        allowed = self.allowed()
        if self.curve_secret is None:
            given = [flag for value, flag in allowed.values() if value is not None]
            if given:
                raise S2IError(f"{given[0]} needs --curve-secret (the server's secret key file)")
            return None
        missing = [flag for value, flag in allowed.values() if value is None]
        if missing:
            raise S2IError(f"--curve-secret needs {' and '.join(missing)} (folders of allowed "
                           "public keys)")
        return ServerSecurity(ctx, self.curve_secret,
                              {domain: str(value) for domain, (value, _) in allowed.items()})


@dataclass
class NodeServerCurve(ServerCurve):
    """``ServerCurve`` of a server that capture nodes connect to (``s2i-serve``)."""

    allow_nodes: str | None = field(default=None, metadata={
        "metavar": "DIR",
        "help": "folder of public .key files of the capture nodes allowed on --bind"})

    def allowed(self) -> dict[str, tuple[str | None, str]]:
        return {**super().allowed(), NODES_DOMAIN: (self.allow_nodes, "--allow-nodes")}


# --- clients --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClientKeys:
    """A client's own key pair (its ``.key_secret`` file) and the server's public key file."""

    secret_file: str | Path
    server_key_file: str | Path

    def apply(self, socket: zmq.Socket) -> None:
        """Make ``socket`` a CURVE client of the server (call before connect)."""
        public, secret = load_secret(self.secret_file, "client secret")
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_serverkey = load_public(self.server_key_file, "server public")


@dataclass
class ClientCurve:
    """A client's CURVE flags (``s2i-view``, ``s2i-capture``)."""

    curve_secret: str | None = field(default=None, metadata={
        "metavar": "FILE",
        "help": "this client's secret key file (NAME.key_secret from s2i-keys)"})
    server_key: str | None = field(default=None, metadata={
        "metavar": "FILE", "help": "the server's public key file (SERVER.key)"})
    retry: bool = switch("when the server refuses the handshake (a key it does not allow, "
                         "CURVE on one side only), log it and try again after 0.5 s, doubling "
                         "to 10 s, instead of exiting with the error")

    def keys(self) -> ClientKeys | None:
        """The key files, checked now (not at connect); None without CURVE."""
        if self.curve_secret is None and self.server_key is None:
            return None
        if self.curve_secret is None or self.server_key is None:
            raise S2IError("CURVE needs both --curve-secret (this client's key_secret file) "
                           "and --server-key (the server's public key file)")
        keys = ClientKeys(self.curve_secret, self.server_key)
        load_secret(keys.secret_file, "client secret")      # fail now, not at connect
        load_public(keys.server_key_file, "server public")
        return keys


class HandshakeWatch(SocketMonitor):
    """Socket monitor events of a connecting socket, turned into one line on failure.

    libzmq gives up a connection whose handshake was refused without a word (it does not
    reconnect); this names the reason: a plaintext client against a CURVE server (or the
    reverse), a key the server does not allow, or (no handshake ever completes) a wrong
    server key. The latest handshake counts: a refusal after an earlier success (the server
    restarted with other keys) is a failure again. ``runtime.wire.client.ClientSocket`` acts on it.
    """

    EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
              | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
              | zmq.EVENT_DISCONNECTED)

    def __init__(self, socket: zmq.Socket, address: str, curve: bool) -> None:
        self.address, self.curve = address, curve
        super().__init__(socket, self.EVENTS)
        self.succeeded = False
        self.failure: str | None = None
        self.disconnects = 0

    def poll(self) -> str | None:
        """Read pending events; the failure line if the latest handshake failed, else None."""
        for kind, value in self.pending():
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.succeeded, self.failure = True, None
                continue
            if kind == zmq.EVENT_DISCONNECTED:
                self.disconnects += 1
                continue
            self.succeeded = False
            if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.failure = (f"the server at {self.address} refused our key (ZAP status "
                                f"{value}): its allowed-keys folder does not hold our public key")
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                    self.failure = (
                        f"the server at {self.address} uses CURVE encryption; give "
                        "--curve-secret and --server-key" if not self.curve else
                        f"the server at {self.address} does not use CURVE, this client does")
                else:
                    self.failure = (f"handshake with {self.address} failed (ZMTP protocol "
                                    f"error {value:#x})")
            else:      # the peer hung up during the handshake
                self.failure = f"handshake with {self.address} failed: " + (
                    "is --server-key the public key of that server, and does it use CURVE?"
                    if self.curve else "the server probably uses CURVE encryption; give "
                    "--curve-secret and --server-key")
        return None if self.succeeded else self.failure

    def timeout_reason(self) -> str:
        """Why nothing came: a failure line, or a guess from the events seen."""
        failure = self.poll()
        if failure:
            return failure
        if not self.succeeded and self.disconnects and self.curve:
            return (f"the CURVE handshake with {self.address} never completed; is --server-key "
                    "the public key of that server?")
        if not self.succeeded:
            return f"no S2I server answered on {self.address}"
        return ""
