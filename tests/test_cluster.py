"""The translator as a Ray Serve deployment on a real two-node Ray cluster on this machine:
parity with the local backend (input-sensitive model, same masks), batching across fronts,
bad requests, a stream through ``s2i-serve --cluster``, a replica killed mid-stream, the
cluster lost and back, an unreachable cluster. One cluster (head + a worker node whose
``s2i_worker`` resource holds both replicas) is shared by the module."""

from __future__ import annotations

import os
import secrets
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

# Ray >= 2.59 authenticates with a token, by default ~/.ray/auth_token, shared by every local
# cluster of this user: this module's cluster, fronts and bridges (children of this process)
# use a token of their own. Ray reads these when imported, so they are set first.
if not os.environ.get("RAY_AUTH_TOKEN"):
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))

ray = pytest.importorskip("ray", reason="ray[serve] is not installed (pip install 's2i[cluster]')")
serve = pytest.importorskip("ray.serve",
                            reason="ray[serve] is not installed (pip install 's2i[cluster]')")

from runtime.cluster import open_cluster_translator  # noqa: E402
from runtime.errors import S2IError  # noqa: E402
from runtime.frontend import FrontEndConfig, log_mel  # noqa: E402
from runtime.model.backends import open_translator  # noqa: E402
from runtime.model.masks import draw_masks  # noqa: E402

APP = "s2i"
CONFIG = Path(__file__).parents[1] / "deploy" / "serve.yaml"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from helpers_runtime import tiny_export
    from ray.cluster_utils import Cluster

    from runtime.cluster.deployment import S2ITranslator

    export = tiny_export(tmp_path_factory)       # width 0.125, D=64, input-sensitive
    head = Cluster(initialize_head=True,
                   head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        # A second node with its own resources: the replicas can only run there, so every
        # call really crosses from the front's node to another raylet.
        head.add_node(num_cpus=2, resources={"s2i_worker": 2})
        ray.init(address=head.address, logging_level="ERROR", log_to_driver=False)
        serve.start(proxy_location="Disabled")
        app = S2ITranslator.options(
            num_replicas=2, ray_actor_options={"num_cpus": 0, "resources": {"s2i_worker": 1}},
            user_config={"max_batch_size": 8, "batch_wait_timeout_s": 0.005},
        ).bind(str(export), "onnxruntime-cpu", "fp32", 1)
        serve.run(app, name=APP, route_prefix=None)
        yield SimpleNamespace(address=head.address, export=export, head=head,
                              spec=f"{head.address}/{APP}")
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            head.shutdown()


def features(export, seconds: list[float], seed: int = 0) -> np.ndarray:
    """One distinct sound per window (tones and noise), as the front computes them."""
    front_end = FrontEndConfig.from_dict(open_translator(export).manifest["front_end"])
    rng = np.random.default_rng(seed)
    t = np.arange(front_end.n_samples) / front_end.sample_rate
    windows = []
    for i, freq in enumerate(seconds):
        audio = 0.4 * np.sin(2 * np.pi * freq * t) + 0.1 * (i % 2) * rng.standard_normal(t.size)
        windows.append(log_mel(audio.astype(np.float32), front_end)[None])
    return np.stack(windows).astype(np.float32)


def local_images(translator, spec: np.ndarray, masks, samples: int) -> np.ndarray:
    return translator.generate(np.repeat(translator.encode(spec), samples, axis=0), masks)


def test_serve_config_file_is_a_valid_serve_config():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from runtime.cluster.deployment import DEPLOYMENT

    config = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    app = config.applications[0]
    assert app.name == APP and app.import_path == "runtime.cluster.deployment:build_app"
    assert app.deployments[0].name == DEPLOYMENT
    assert app.deployments[0].ray_actor_options.num_gpus == 1


def test_cluster_translator_matches_the_local_backend(cluster):
    local = open_translator(cluster.export, backend="onnxruntime-cpu")
    spec = features(cluster.export, [220.0, 660.0, 1500.0, 3000.0])
    samples = 3
    masks = draw_masks(local.dropout, len(spec) * samples, np.random.default_rng(7))
    want = local_images(local, spec, masks, samples)
    with open_cluster_translator(cluster.spec) as remote:
        assert remote.manifest == local.manifest and remote.dropout == local.dropout
        assert remote.backend == f"ray:{APP}/onnxruntime-cpu"
        assert remote.features == "host"
        got, timings = remote.translate_batch(spec, masks, samples)
        assert set(timings) == {"cluster", "encoder", "generator"}
        one = remote.translate_window(spec[:1], [m[:samples] for m in masks])
        with pytest.raises(S2IError, match="rejected the request: .*mask"):
            remote.translate_batch(spec, [m[:2] for m in masks], samples)
        again, _ = remote.translate_batch(spec[1:2], [m[3:6] for m in masks], samples)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(one[0], want[:samples], rtol=0, atol=1e-5)
    np.testing.assert_allclose(again, want[3:6], rtol=0, atol=1e-5)
    # The model is input-sensitive: other windows, other masks give other pictures, so a
    # mix-up of rows could not pass the comparison above.
    grey = (want + 1) * 127.5
    assert np.abs(grey[0] - grey[samples]).mean() > 5        # another sound
    assert np.abs(grey[0] - grey[1]).mean() > 2              # other masks, same sound


def test_fronts_calling_at_once_are_batched_and_each_gets_its_own(cluster):
    local = open_translator(cluster.export, backend="onnxruntime-cpu")
    fronts = 3
    specs = [features(cluster.export, [300.0 * (i + 1), 5000.0 / (i + 1)], seed=i)
             for i in range(fronts)]
    masks = [draw_masks(local.dropout, 4, np.random.default_rng(10 + i)) for i in range(fronts)]
    results: dict[int, np.ndarray] = {}
    translators = [open_cluster_translator(cluster.spec) for _ in range(fronts)]
    try:
        def front(i: int) -> None:
            for _ in range(5):
                results[i] = translators[i].translate_batch(specs[i], masks[i], 2)[0]

        threads = [threading.Thread(target=front, args=(i,)) for i in range(fronts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        for t in translators:
            t.close()
    for i in range(fronts):
        np.testing.assert_allclose(results[i], local_images(local, specs[i], masks[i], 2),
                                   rtol=0, atol=1e-5)


def test_unreachable_cluster_is_one_line(cluster):
    start = time.monotonic()
    with pytest.raises(S2IError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        open_cluster_translator("127.0.0.1:1/s2i")
    with pytest.raises(S2IError, match="serves no S2I application 'nope'"):
        open_cluster_translator(f"{cluster.address}/nope")
    assert time.monotonic() - start < 60


# --- a stream through s2i-serve --cluster --------------------------------------------------

def sweep(rate: int, seconds: float) -> np.ndarray:
    """A rising chirp with a wobbling level: every window sounds different."""
    t = np.arange(int(rate * seconds)) / rate
    freq = 200.0 + 900.0 * t
    audio = np.sin(2 * np.pi * np.cumsum(freq) / rate) * (0.3 + 0.2 * np.sin(2 * np.pi * 0.7 * t))
    return audio.astype(np.float32)


class Front:
    """``s2i-serve --cluster`` with a capture node (this test) pushing paced audio over tcp
    and a subscriber receiving raw frames."""

    def __init__(self, cluster, seed: int, samples: int = 2, spec: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        import zmq
        from helpers_runtime import CLI

        from runtime.wire.client import Subscriber

        self.samples, self.seed = samples, seed
        self.cli = CLI("s2i-serve", "--cluster", spec or cluster.spec, "--bind",
                       "tcp://127.0.0.1:*", "--pub", "tcp://127.0.0.1:*", "--hop", "0.5",
                       "--samples", str(samples), "--seed", str(seed), "--encoding", "raw",
                       "--max-batch", "4", env=env)
        match = self.cli.wait_line(r"serving on (tcp://\S+) -> (tcp://\S+) \(backend (\S+),",
                                   timeout=120)
        self.backend = match.group(3)
        self.ctx = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.connect(match.group(1))
        self.sub = Subscriber(match.group(2))
        self.sub.wait_ready(30)
        self.frames: list = []

    def send(self, audio: np.ndarray, rate: int, start_seq: int, block_s: float = 0.25,
             pace: bool = True) -> None:
        from runtime.wire.protocol import encode_audio

        block = int(rate * block_s)
        for i, begin in enumerate(range(0, len(audio), block)):
            self.push.send_multipart(encode_audio("node-a", start_seq + i,
                                                  audio[begin:begin + block], rate, time.time()))
            if pace:
                time.sleep(block_s)
            self.drain(0.0)

    def drain(self, timeout: float) -> None:
        while (frame := self.sub.receive(timeout)) is not None:
            self.frames.append(frame)

    def close(self) -> None:
        import signal

        self.push.close(linger=0)
        self.sub.close()
        self.ctx.term()
        self.cli.signal(signal.SIGTERM)
        code = self.cli.wait(30)
        assert code == 0, self.cli.stderr()
        assert "Traceback" not in self.cli.stderr()


def expected_frames(export, frames, audio: np.ndarray, seed: int, samples: int) -> list:
    """What the local backend gives for the same windows and the same masks: the front draws
    ``batch * samples`` mask rows per batch from its seeded generator, in frame order."""
    translator = open_translator(export, backend="onnxruntime-cpu")
    front_end = FrontEndConfig.from_dict(translator.manifest["front_end"])
    rng = np.random.default_rng(seed)
    want = []
    for frame in frames:
        assert frame.header["batch"] == 1          # one stream: one window per batch
        end = int(round(frame.header["position_s"] * front_end.sample_rate))
        window = audio[end - front_end.n_samples:end]
        spec = log_mel(window, front_end)[None, None].astype(np.float32)
        masks = draw_masks(translator.dropout, samples, rng)
        out = local_images(translator, spec, masks, samples)
        want.append(np.clip(np.round((out.transpose(0, 2, 3, 1) + 1) * 127.5), 0, 255))
    return want


def test_a_stream_through_s2i_serve_cluster_equals_the_local_backend(cluster):
    seed, seconds = 11, 3.0
    front = Front(cluster, seed)
    rate = 16000
    audio = sweep(rate, seconds)
    try:
        assert front.backend == "ray:s2i/onnxruntime-cpu"
        front.send(audio, rate, 0)
        while len(front.frames) < 5:
            before = len(front.frames)
            front.drain(20.0)
            if len(front.frames) == before:
                break
    finally:
        front.close()
    frames = front.frames
    # Every window of the stream arrived: ends at 1.0, 1.5, ..., 3.0 s, seq 0..4, none skipped.
    assert [f.header["position_s"] for f in frames] == [1.0, 1.5, 2.0, 2.5, 3.0], \
        front.cli.stderr()
    assert [f.seq for f in frames] == list(range(5))
    want = expected_frames(cluster.export, frames, audio, seed, front.samples)
    for frame, expected in zip(frames, want, strict=True):
        got = np.stack(frame.images).astype(np.float64)
        assert np.abs(got - expected).max() <= 1, frame.header     # rounding at most
    first = np.stack(frames[0].images).astype(float)
    assert np.abs(first - np.stack(frames[-1].images).astype(float)).mean() > 5
    # The header reports the round trip as `cluster` and the replica's own model run as
    # `encoder` / `generator` (not the round trip as "generator" and 0 for the encoder).
    for frame in frames:
        t = frame.header["timings_ms"]
        assert set(t) == {"features", "encoder", "generator", "cluster", "encoding"}, t
        assert t["encoder"] > 0 and t["generator"] > 0, t
        assert t["cluster"] > t["encoder"] + t["generator"], t


def replicas() -> list[str]:
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith(f"SERVE_REPLICA::{APP}#"))


def test_a_replica_killed_mid_stream_and_the_stream_goes_on(cluster):
    seed, rate = 5, 16000
    audio = sweep(rate, 6.0)
    before = replicas()
    assert len(before) == 2
    front = Front(cluster, seed)
    try:
        front.send(audio[:rate * 2], rate, 0)                # windows ending at 1.0 .. 2.0 s
        front.drain(5.0)
        assert len(front.frames) >= 2, front.cli.stderr()
        ray.kill(ray.get_actor(before[0], namespace="serve"), no_restart=True)
        front.send(audio[rate * 2:], rate, 8)                # ... 2.5 .. 6.0 s
        deadline = time.monotonic() + 30
        while front.frames[-1].header["position_s"] < 6.0 and time.monotonic() < deadline:
            front.drain(2.0)
    finally:
        front.close()
    frames, stderr = front.frames, front.cli.stderr()
    positions = [f.header["position_s"] for f in frames]
    assert positions[-1] == 6.0, stderr                      # the stream went on to its end
    assert [f.seq for f in frames] == sorted({f.seq for f in frames})
    missing = 11 - len(frames)                               # windows ending at 1.0 .. 6.0 s
    # A window whose replica died was retried once on the other replica, or dropped and
    # counted; the front says which, in one line each, and never crashed.
    if missing:
        assert "was dropped" in stderr or "hops skipped" in stderr, stderr
    want = expected_frames(cluster.export, frames, audio, seed, front.samples) \
        if not missing else None
    if want is not None:
        for frame, expected in zip(frames, want, strict=True):
            assert np.abs(np.stack(frame.images).astype(float) - expected).max() <= 1
    # Serve replaces the killed replica.
    deadline = time.monotonic() + 90
    while (len(replicas()) < 2 or before[0] in replicas()) and time.monotonic() < deadline:
        time.sleep(1)
    assert len(replicas()) == 2 and before[0] not in replicas()


def children(pid: int) -> list[int]:
    from pathlib import Path as P

    try:
        return [int(c) for task in P(f"/proc/{pid}/task").iterdir()
                for c in (task / "children").read_text().split()]
    except OSError:
        return []


def replica_pids(cluster) -> list[int]:
    """The replicas' processes: workers of this module's second node (its raylet's
    children), not another cluster's on this machine."""
    from pathlib import Path as P

    (node,) = cluster.head.worker_nodes
    raylet = node.all_processes[ray._private.ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    return [pid for pid in children(raylet)
            if P(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ServeReplica:s2i:")]


def test_every_replica_stalled_and_back_publishes_no_stale_frame(cluster):
    """Head up, every replica unresponsive for 6 s (stopped), then back: the call that waited
    and the batch queued behind it come back seconds old; they are dropped and counted, not
    published, and the stream goes on with fresh windows."""
    import signal

    rate, seconds = 16000, 14
    audio = sweep(rate, float(seconds))
    front = Front(cluster, seed=4)
    pids = replica_pids(cluster)
    assert len(pids) == 2
    try:
        front.send(audio[:rate * 4], rate, 0)                   # windows ending 1.0 .. 4.0 s
        front.drain(3.0)
        assert len(front.frames) >= 4, front.cli.stderr()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            front.send(audio[rate * 4:rate * 10], rate, 16)     # 6 s without a replica
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        front.send(audio[rate * 10:], rate, 40)
        deadline = time.monotonic() + 40
        while front.frames[-1].header["position_s"] < seconds and time.monotonic() < deadline:
            front.drain(2.0)
    finally:
        front.close()
    stderr = front.cli.stderr()
    late = [(f.seq, round(f.header["publish_time"] - f.header["capture_time"], 1))
            for f in front.frames if f.header["publish_time"] - f.header["capture_time"] > 4.0]
    assert not late, stderr                                  # (seq, seconds stale) published
    assert "after their window was due" in stderr, stderr   # the stale results, counted
    assert front.frames[-1].header["position_s"] == seconds, stderr


def test_a_wrong_or_missing_token_is_named_with_a_hint(cluster, monkeypatch):
    from runtime.cluster.client import ClusterTranslator

    monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 64)           # not this cluster's token
    with pytest.raises(S2IError) as error:
        ClusterTranslator(cluster.address, APP, connect_timeout_s=30)
    message = str(error.value)
    assert "\n" not in message and "token authentication" in message, message
    assert "Unauthenticated" in message or "InvalidAuthToken" in message, message


def bridge_pid(parent: int) -> int:
    """The front's Ray bridge process (runtime.cluster.bridge), a child of ``parent``."""
    from pathlib import Path as P

    for task in P(f"/proc/{parent}/task").iterdir():
        for child in (task / "children").read_text().split():
            if "runtime.cluster.bridge" in P(f"/proc/{child}/cmdline").read_text():
                return int(child)
    raise AssertionError("no bridge process")


def test_the_cluster_connection_lost_and_back(cluster):
    import os
    import signal

    rate = 16000
    audio = sweep(rate, 150.0)
    front = Front(cluster, seed=2)
    try:
        front.send(audio[:rate * 2], rate, 0)
        front.drain(5.0)
        assert front.frames, front.cli.stderr()
        # The front's connection to the cluster dies (as when the head or the network goes):
        # the front logs it, drops windows while it reconnects with backoff (on the next
        # batches: the stream keeps coming), then resumes. A new bridge starts a Python with
        # Ray: seconds here, a minute on a loaded machine.
        os.kill(bridge_pid(front.cli.process.pid), signal.SIGKILL)
        second, seq = 2, 8
        while "streams resume" not in front.cli.stderr() and second < 140:
            front.send(audio[rate * second:rate * (second + 1)], rate, seq)
            second, seq = second + 1, seq + 4
        assert "streams resume" in front.cli.stderr(), front.cli.stderr()
        back_at = second
        front.send(audio[rate * second:rate * (second + 2)], rate, seq)
        end = float(second + 2)
        deadline = time.monotonic() + 40
        while front.frames[-1].header["position_s"] < end and time.monotonic() < deadline:
            front.drain(2.0)
    finally:
        front.close()
    stderr = front.cli.stderr()
    assert "lost (the Ray bridge process exited" in stderr and "reconnecting in 1 s" in stderr
    resumed = [f for f in front.frames if f.header["position_s"] > back_at]
    assert resumed and front.frames[-1].header["position_s"] == end, stderr


def test_s2i_serve_and_s2i_stream_with_an_unreachable_cluster_say_one_line(tmp_path):
    from helpers_runtime import run_cli, write_tone_wav

    wav = write_tone_wav(tmp_path / "tone.wav", 1.0)
    for script, extra in (("s2i-serve", []), ("s2i-stream", ["--file", str(wav)])):
        result = run_cli(script, "--cluster", "127.0.0.1:1/s2i", "--pub", "tcp://127.0.0.1:*",
                         *extra, timeout=60)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith("error: cannot reach the Ray cluster at 127.0.0.1:1")
    bad = run_cli("s2i-serve", "--cluster", "127.0.0.1:6379/no spaces", timeout=60)
    assert bad.returncode == 2 and "application name" in bad.stderr


# --- the scripted loopback cluster of docs/SCALING.md ------------------------------------

def group_pids(pgid: int) -> list[int]:
    from pathlib import Path as P

    pids = []
    for entry in P("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and int(fields[2]) == pgid and fields[0] not in "ZX":
            pids.append(int(entry.name))
    return pids


def listening(pids: list[int]) -> dict[int, list[str]]:
    """pid -> the local addresses (hex, as in /proc/net/tcp*) of its listening TCP sockets."""
    from pathlib import Path as P

    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in P(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    found: dict[int, list[str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in P(table).read_text().splitlines()[1:]:
            cols = row.split()
            if cols[3] == "0A" and cols[9] in inodes:               # LISTEN
                found.setdefault(inodes[cols[9]], []).append(cols[1].rpartition(":")[0])
    return found


def test_the_scripted_loopback_cluster_serves_a_front_and_stops_only_itself(cluster, tmp_path):
    """docs/SCALING.md's two-node loopback setup as typed: start, deploy, a front serving
    frames, stop; the nodes listen on 127.0.0.1 only (replicas' own gRPC server aside), and
    stop ends exactly the processes it started (this module's cluster keeps running)."""
    import json
    import subprocess
    import sys

    from runtime.cluster.local import START_ATTEMPTS, STARTUP_TIMEOUT, alive, descendants

    folder = tmp_path / "ray-local"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}

    def local(*args: str, timeout: float = 400) -> str:
        done = subprocess.run([sys.executable, "-m", "runtime.cluster.local", *args,
                               "--dir", str(folder)], env=env, capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, done.stderr + done.stdout
        return done.stdout

    started: list[int] = []
    try:
        done = subprocess.run([sys.executable, "-m", "runtime.cluster.local", "start",
                               "--worker-cpus", "1", "--dir", str(folder)], env=env,
                              capture_output=True, text=True, timeout=600)
        if done.returncode and STARTUP_TIMEOUT in done.stderr:
            pytest.skip("Ray could not start a node here: its fixed 30-s wait for a new "
                        f"raylet passed {START_ATTEMPTS} times (machine too busy)")
        assert done.returncode == 0, done.stderr + done.stdout
        state = json.loads((folder / "cluster.json").read_text())
        assert state["gcs"].startswith("127.0.0.1:")
        assert oct((folder / "auth_token").stat().st_mode & 0o777) == "0o600"
        saved = json.loads((folder / "config_start.json").read_text())   # the resolved config
        assert (saved["command"], saved["worker_cpus"]) == ("start", 1)
        local("deploy", "--export", str(cluster.export), "--backend", "onnxruntime-cpu",
              "--threads", "1")
        front_env = dict(env)
        for line in local("env").splitlines():
            if line.startswith("export "):
                key, _, value = line[7:].partition("=")
                front_env[key] = value
        front = Front(cluster, seed=1, spec=f"{state['gcs']}/s2i", env=front_env)
        try:
            front.send(sweep(16000, 1.5), 16000, 0)
            front.drain(20.0)
        finally:
            front.close()
        assert front.frames and front.frames[0].header["position_s"] == 1.0, \
            front.cli.stderr()
        assert front.backend == "ray:s2i/onnxruntime-cpu"
        started = [pid for node in state["nodes"]
                   for pid in {node["pid"], *descendants(node["pid"]), *group_pids(node["pgid"])}]
        serving = {pid for pid in started
                   if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ServeReplica")}
        assert serving, started
        loopback = ("0100007F", "0000000000000000FFFF00000100007F")      # 127.0.0.1 (v4, v6)
        for pid, addresses in listening(started).items():
            if pid not in serving:       # a replica's gRPC server binds [::] (docs/SCALING.md)
                assert all(a in loopback for a in addresses), (pid, addresses)
    finally:
        if (folder / "cluster.json").exists():
            local("stop")
    assert started and not [pid for pid in started if alive(pid)]     # all of it ended
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2      # the other cluster is intact
    assert len(replicas()) == 2


def test_local_cluster_commands_refuse_bad_state_in_one_line(tmp_path):
    import subprocess
    import sys

    from runtime.cluster.deployment import build_app

    def local(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "runtime.cluster.local", *args],
                              capture_output=True, text=True, timeout=60)

    for command in ("stop", "status", "env"):
        done = local(command, "--dir", str(tmp_path / "none"))
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert "no local cluster was started" in done.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cluster.json").write_text('{"gcs": 1}')
    done = local("stop", "--dir", str(tmp_path / "bad"))
    assert done.returncode == 2 and "expected {gcs, dashboard, nodes}" in done.stderr
    with pytest.raises(S2IError, match="give an absolute path"):
        build_app({"export": "runs/demo/export"})
