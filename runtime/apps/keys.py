"""``s2i-keys``: make CURVE key pairs for S2I servers and clients (pyzmq's zmq.auth).

    s2i-keys server --dir keys/            # keys/server.key (public), keys/server.key_secret
    s2i-keys viewer --dir keys/subscribers # give keys/subscribers/ to --allow-subscribers

The ``.key`` file is public: copy it to whoever needs it (a server's allowed folder, or a
client's ``--server-key``). The ``.key_secret`` file stays with its owner (mode 0600).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import zmq.auth

from runtime.cli import log
from runtime.config import parse_config
from runtime.errors import S2IError, run_cli

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def make_key_pair(name: str, folder: str | Path) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` into ``folder``; never overwrites."""
    if not NAME.match(name):
        raise S2IError(f"key name {name!r} should be 1-64 letters, digits, '.', '_' or '-'")
    folder = Path(folder)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise S2IError(f"{path} already exists; remove it or choose another name")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        old = os.umask(0o077)           # the secret file is never readable by others
        try:
            made_public, made_secret = zmq.auth.create_certificates(folder, name)
        finally:
            os.umask(old)
        os.chmod(made_public, 0o644)
    except OSError as exc:
        raise S2IError(f"cannot write keys into {folder}: {exc.strerror or exc}") from exc
    return Path(made_public), Path(made_secret)


@dataclass
class KeysConfig:
    name: str = field(metadata={"positional": True,
                                "help": "key name, e.g. server, viewer-1, node-kitchen"})
    dir: Path = field(default=Path("keys"), metadata={"help": "folder to write into"})


def keys_main(argv: list[str] | None = None) -> int:
    cfg = parse_config(KeysConfig, sys.argv[1:] if argv is None else argv, "s2i-keys",
                       "Make a CURVE key pair (NAME.key public, NAME.key_secret secret) for "
                       "s2i-serve/s2i-stream and their clients.")
    public, secret = make_key_pair(cfg.name, cfg.dir)
    log(f"wrote {public} (public: give it to the other side) and {secret} (secret: keep it)")
    print(public)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: keys_main(argv))


if __name__ == "__main__":
    sys.exit(main())
