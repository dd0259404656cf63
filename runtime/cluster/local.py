"""A two-node Ray cluster on this machine's loopback, to try the scale-out (docs/SCALING.md).

    python -m runtime.cluster.local start [--dir runs/ray-local] [--worker-cpus 2]
    python -m runtime.cluster.local deploy --export runs/demo/export [--replicas 2]
    python -m runtime.cluster.local status
    eval "$(python -m runtime.cluster.local env)"     # ray / serve commands on this cluster
    python -m runtime.cluster.local stop

``start`` runs a head (GCS, dashboard, Serve controller; no CPUs for replicas) and a second
node (``--worker-cpus``/``--worker-gpus`` and the ``s2i_worker`` resource the replicas need),
both advertised as 127.0.0.1 and on ports chosen free at start, with a token of their own
(``DIR/auth_token``; never ``~/.ray/auth_token``, which every local cluster of the user would
pick up). It prints the ``--cluster`` address for the fronts. ``stop`` ends what ``start``
started (each node's process group, recorded in ``DIR/cluster.json``) and nothing else:
never ``ray stop``, which ends every Ray on the machine.

Ray 2.60's ``ray start`` rewrites 127.0.0.1 to the host's network address and refuses a
second node on one machine when told to stay on loopback (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
=0``). Each node is therefore ``ray start --block`` run by this module with that variable set
(so Ray's processes use 127.0.0.1) and the refusal skipped for the second node.
What this does not change: Ray's gRPC servers and a replica's own gRPC server listen on every
interface (docs/SCALING.md, "Ports"); the token is what keeps other machines out.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.config import parse_config, save_config
from runtime.errors import S2IError, run_cli

DEFAULT_DIR = "runs/ray-local"
STATE = "cluster.json"
LOOPBACK = "127.0.0.1"
WORKER_RESOURCE = "s2i_worker"
# Every process of the cluster (and every driver: fronts, serve) runs with these.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_AUTH_MODE": "token"}
NODE_PORTS = ("node-manager-port", "object-manager-port", "metrics-export-port",
              "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
              "runtime-env-agent-port")
START_ATTEMPTS = 3
STARTUP_TIMEOUT = "timed out during startup"      # Ray's words for its 30-s raylet wait
HEAD_PORTS = ("port", "dashboard-port", "ray-client-server-port")


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports the OS says are free on loopback now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((LOOPBACK, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def cluster_env(folder: Path) -> dict[str, str]:
    """The variables a process needs to use this cluster (Ray reads them at import)."""
    state = read_state(folder)
    return {**LOOPBACK_ENV, "RAY_AUTH_TOKEN_PATH": str(folder / "auth_token"),
            "RAY_ADDRESS": state["gcs"],
            "RAY_DASHBOARD_ADDRESS": f"http://{state['dashboard']}"}


def read_state(folder: Path) -> dict[str, Any]:
    path = folder / STATE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise S2IError(f"{path}: no local cluster was started in {folder} "
                       "(python -m runtime.cluster.local start)") from None
    except (OSError, ValueError) as exc:
        raise S2IError(f"{path}: unreadable ({exc}); stop its processes by hand") from None
    if not isinstance(state, dict) or not all(
            isinstance(state.get(k), str) for k in ("gcs", "dashboard")) \
            or not isinstance(state.get("nodes"), list):
        raise S2IError(f"{path}: expected {{gcs, dashboard, nodes}} as written by start")
    return state


def alive(pid: int) -> bool:
    """Running (a zombie, ended but not yet reaped by its parent, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def descendants(pid: int) -> list[int]:
    """``pid``'s children, their children... (from /proc; Ray's workers leave the node's
    process group, so the tree, not the group, is what a node started)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _node_command(temp_dir: str, head: bool, ports: dict[str, int], gcs: str,
                  cpus: int, gpus: int) -> list[str]:
    command = [sys.executable, "-m", "runtime.cluster.local", "_node", "--block",
               "--node-ip-address", LOOPBACK, "--disable-usage-stats",
               "--num-cpus", str(cpus), "--num-gpus", str(gpus),
               # Workers take OS-chosen ports (a real cluster pins a range: docs/SCALING.md).
               "--min-worker-port", "0", "--max-worker-port", "0"]
    command += [f"--{name}={value}" for name, value in ports.items()]
    if head:
        command += ["--head", "--dashboard-host", LOOPBACK, "--include-dashboard", "true",
                    "--temp-dir", temp_dir]
    else:
        command += ["--address", gcs, "--resources", json.dumps({WORKER_RESOURCE: 8})]
    return command


def _wait_for_nodes(gcs: str, env: dict[str, str], nodes: int, timeout_s: float,
                    procs: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    probe = ("import ray,sys,time\n"
             f"ray.init(address={gcs!r}, logging_level='ERROR', log_to_driver=False)\n"
             f"sys.exit(0 if len([n for n in ray.nodes() if n['Alive']]) >= {nodes} else 3)\n")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc, log in zip(procs, logs, strict=True):
            if proc.poll() is not None:
                tail = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
                raise S2IError(f"a Ray node exited while starting (code {proc.returncode}): "
                               f"{tail[-1] if tail else 'no output'} (log: {log})")
        try:
            done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                                  timeout=max(5.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            continue                       # not up yet; the deadline decides
        if done.returncode == 0:
            return
        time.sleep(1.0)
    raise S2IError(f"the local Ray cluster did not have {nodes} nodes up within "
                   f"{timeout_s:g} s (logs in {logs[0].parent})")


def _make_token(folder: Path) -> Path:
    """``folder/auth_token``: this cluster's token (made once, kept across restarts)."""
    folder.mkdir(parents=True, exist_ok=True)
    token = folder / "auth_token"
    if not token.exists():
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    os.chmod(token, 0o600)                 # readable by this user only, also if it was kept
    return token


def start(folder: Path, worker_cpus: int, worker_gpus: int, timeout_s: float) -> dict[str, Any]:
    folder = folder.resolve()
    if (folder / STATE).exists():
        state = read_state(folder)
        if any(alive(n["pid"]) for n in state["nodes"]):
            raise S2IError(f"a local cluster already runs from {folder} (gcs {state['gcs']}); "
                           "stop it first (python -m runtime.cluster.local stop)")
    token = _make_token(folder)
    ports = free_ports(len(HEAD_PORTS) + 2 * len(NODE_PORTS))
    head_ports = dict(zip(HEAD_PORTS + NODE_PORTS, ports, strict=False))
    worker_ports = dict(zip(NODE_PORTS, ports[len(head_ports):], strict=True))
    gcs = f"{LOOPBACK}:{head_ports['port']}"
    env = {**os.environ, **LOOPBACK_ENV, "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_AUTH_TOKEN", None)       # this cluster's token is its file
    env.pop("RAY_ADDRESS", None)
    # Ray's session folder holds Unix sockets (at most 107 bytes a path): a short one in
    # /tmp of this cluster's own, so that clusters do not share Ray's /tmp/ray.
    temp_dir = tempfile.mkdtemp(prefix="s2i-ray-")
    state: dict[str, Any] = {"gcs": gcs, "dashboard": f"{LOOPBACK}:{head_ports['dashboard-port']}",
                             "ports": {"head": head_ports, "worker": worker_ports},
                             "worker_gpus": worker_gpus, "temp_dir": temp_dir, "nodes": []}
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    try:
        for name, head, node_ports, cpus, gpus in (
                ("head", True, head_ports, 0, 0),
                ("worker", False, worker_ports, worker_cpus, worker_gpus)):
            log = folder / f"{name}.log"
            for attempt in range(1, START_ATTEMPTS + 1):
                with log.open("wb") as out:
                    proc = subprocess.Popen(
                        _node_command(temp_dir, head, node_ports, gcs, cpus, gpus), env=env,
                        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                        start_new_session=True)
                state["nodes"].append({"name": name, "pid": proc.pid, "pgid": proc.pid,
                                       "log": str(log)})
                _write_state(folder, state)
                try:
                    _wait_for_nodes(gcs, env, len(procs) + 1, timeout_s, [*procs, proc],
                                    [*logs, log])
                    break
                except S2IError as exc:
                    # Ray waits a fixed 30 s for a new raylet to register: on a busy machine
                    # that can pass; a few more tries, then the error.
                    if attempt == START_ATTEMPTS or STARTUP_TIMEOUT not in str(exc):
                        raise
                    print(f"the {name} node timed out starting (Ray waits 30 s for its "
                          "raylet); trying again", file=sys.stderr)
                    _end_node(state["nodes"].pop())
            procs.append(proc)
            logs.append(log)
    except BaseException:
        stop(folder, quiet=True)
        raise
    return state


def _end_node(node: dict[str, Any]) -> None:
    """SIGKILL a node's process group and tree (a node that failed to start)."""
    tree = descendants(node["pid"])
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(node["pgid"], signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _write_state(folder: Path, state: dict[str, Any]) -> None:
    partial = folder / (STATE + ".partial")
    partial.write_text(json.dumps(state, indent=2) + "\n")
    partial.replace(folder / STATE)


def stop(folder: Path, quiet: bool = False, grace_s: float = 10.0) -> list[int]:
    """End the process groups ``start`` recorded (SIGTERM, then SIGKILL after ``grace_s``);
    returns the node PIDs that were still running. Nothing else is touched."""
    folder = folder.resolve()
    state = read_state(folder)
    running = [n for n in state["nodes"] if alive(n["pid"])]
    tree = [pid for n in running for pid in descendants(n["pid"])]
    for node in reversed(running):          # the worker first, then the head
        try:
            os.kill(node["pid"], signal.SIGTERM)   # ray start --block ends its processes
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while any(alive(n["pid"]) for n in running) and time.monotonic() < deadline:
        time.sleep(0.2)
    for node in state["nodes"]:       # what is left of each node's group and tree
        _end_node(node)
    for pid in tree:                  # (the tree as it was before the nodes ended)
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    deadline = time.monotonic() + 10.0
    while any(alive(p) for p in [n["pid"] for n in running] + tree) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    if isinstance(state.get("temp_dir"), str) and Path(state["temp_dir"]).name.startswith(
            "s2i-ray-"):
        shutil.rmtree(state["temp_dir"], ignore_errors=True)
    (folder / STATE).unlink(missing_ok=True)
    if not quiet:
        print(f"stopped the local Ray cluster of {folder} ({len(running)} node(s) were running)")
    return [n["pid"] for n in running]


def deploy(folder: Path, export: str, replicas: int, backend: str, threads: int | None,
           app: str) -> None:
    """``serve run --non-blocking`` of deploy/serve.yaml's application, sized for this
    cluster: replicas on the second node (``s2i_worker``), no GPU unless it has some."""
    from runtime.cluster.wire import parse_cluster

    parse_cluster(f"x/{app}")              # the application name's check
    export_dir = Path(export).resolve()
    if not (export_dir / "manifest.json").is_file():
        raise S2IError(f"--export {export}: no manifest.json in {export_dir} (an export "
                       "folder of python -m export)")
    env = {**os.environ, **cluster_env(folder.resolve())}
    env.pop("RAY_AUTH_TOKEN", None)
    state = read_state(folder.resolve())
    gpus = 1 if state.get("worker_gpus") else 0
    config = {
        "proxy_location": "Disabled",
        "applications": [{
            "name": app, "route_prefix": None,
            "import_path": "runtime.cluster.deployment:build_app",
            "args": {"export": str(export_dir), "backend": backend,
                     **({"threads": threads} if threads else {})},
            "deployments": [{
                "name": "S2ITranslator", "num_replicas": replicas,
                "ray_actor_options": {"num_cpus": 0, "num_gpus": gpus,
                                      "resources": {WORKER_RESOURCE: 1}}}]}]}
    path = folder.resolve() / "serve.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    done = subprocess.run([sys.executable, "-m", "ray.serve.scripts", "run", "--address",
                           state["gcs"], "--non-blocking", str(path)],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [x for x in (done.stderr + done.stdout).splitlines() if x.strip()]
        raise S2IError(f"serve run failed: {lines[-1] if lines else done.returncode}")
    print(f"deployed {export_dir} as application '{app}' ({replicas} replica(s)); fronts: "
          f"s2i-serve --cluster {state['gcs']}/{app} (with the variables of "
          f"`python -m runtime.cluster.local env --dir {folder}`)")


def status(folder: Path) -> int:
    state = read_state(folder.resolve())
    up = 0
    for node in state["nodes"]:
        running = alive(node["pid"])
        up += running
        print(f"{node['name']}: pid {node['pid']} {'running' if running else 'gone'} "
              f"(log {node['log']})")
    print(f"gcs {state['gcs']}  dashboard http://{state['dashboard']}  "
          f"token {folder.resolve() / 'auth_token'}")
    return 0 if up == len(state["nodes"]) else 1


def node_main(argv: list[str]) -> int:
    """One ``ray start`` with 127.0.0.1 kept as the node's address (see the module doc)."""
    from ray._private import ray_constants, services
    from ray.scripts import scripts

    services.get_node_ip_address = lambda address=None: LOOPBACK   # no rewrite to the LAN
    ray_constants.ENABLE_RAY_CLUSTER = True        # allow the second node; children keep 0
    sys.argv = ["ray", "start", *argv]
    return int(scripts.main() or 0)  # type: ignore[func-returns-value]


COMMANDS = ("start", "deploy", "status", "env", "stop")


@dataclass
class LocalClusterConfig:
    """``python -m runtime.cluster.local COMMAND``'s settings; ``start`` and ``deploy`` save
    theirs in the cluster's folder (``config_start.json``, ``config_deploy.json``)."""

    command: str = field(metadata={"positional": True, "choices": COMMANDS,
                                   "help": "what to do with the cluster"})
    dir: str = field(default=DEFAULT_DIR, metadata={
        "help": f"the cluster's folder: token, state, logs (default {DEFAULT_DIR})"})
    worker_cpus: int = field(default=2, metadata={
        "help": "start: CPUs of the second node, where the replicas run"})
    worker_gpus: int = field(default=0, metadata={"help": "start: GPUs of the second node"})
    timeout: float = field(default=180.0, metadata={"help": "seconds for each node to come up"})
    export: str | None = field(default=None, metadata={
        "help": "deploy: the export folder (made absolute)"})
    replicas: int = field(default=1, metadata={"help": "deploy: replicas of the translator"})
    backend: str = field(default="auto", metadata={"help": "deploy: the replicas' backend"})
    threads: int | None = field(default=None, metadata={
        "help": "deploy: CPU threads of each replica's ONNX Runtime"})
    app: str = field(default="s2i", metadata={"help": "deploy: the application's name"})


def run_command(cfg: LocalClusterConfig) -> int:
    folder = Path(cfg.dir)
    if cfg.command == "start":
        if cfg.worker_cpus < 1 or cfg.worker_gpus < 0:
            raise S2IError("--worker-cpus should be >= 1 and --worker-gpus >= 0")
        state = start(folder, cfg.worker_cpus, cfg.worker_gpus, cfg.timeout)
        save_config(cfg, folder / "config_start.json")
        print(f"local Ray cluster up: gcs {state['gcs']}, dashboard "
              f"http://{state['dashboard']}, token {folder.resolve() / 'auth_token'}")
        print(f"next: python -m runtime.cluster.local deploy --dir {cfg.dir} "
              "--export EXPORT_DIR")
        return 0
    if cfg.command == "deploy":
        if not cfg.export:
            raise S2IError("deploy needs --export EXPORT_DIR")
        if cfg.replicas < 1:
            raise S2IError(f"--replicas should be >= 1, got {cfg.replicas}")
        deploy(folder, cfg.export, cfg.replicas, cfg.backend, cfg.threads, cfg.app)
        save_config(cfg, folder / "config_deploy.json")
        return 0
    if cfg.command == "env":
        for key, value in cluster_env(folder.resolve()).items():
            print(f"export {key}={value}")
        print("unset RAY_AUTH_TOKEN")
        return 0
    if cfg.command == "status":
        return status(folder)
    stop(folder)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_node"]:
        return node_main(argv[1:])
    return run_cli(lambda: run_command(parse_config(
        LocalClusterConfig, argv, "python -m runtime.cluster.local", __doc__.split("\n\n")[0])))


if __name__ == "__main__":
    sys.exit(main())
