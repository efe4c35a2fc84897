"""One cluster on this machine: a broker, node processes with their monitors, clients, checks, teardown.

Every one-machine run starts its cluster here — the demos, live experiments and the live
benchmarks — so the start-up sequence exists once::

    nodes = [NodeSpec("pi", "raspberry-pi-4", next="jetson", extra=("--uplink-mbps", "20")),
             NodeSpec("jetson", "jetson-nano", extra=("--uplink-mbps", "1000"))]
    with Cluster("mobilenet_v2", nodes, cluster="lab", logs=Path("runs/lab")).start() as lab:
        client = lab.client("c1", source="pi")
        client.run(5.0)

:meth:`Cluster.start` starts the broker (the embedded one, or Mosquitto), spawns each node
(``adaptive node --emulate DEVICE --monitor``, or inside a network namespace), and waits until
every node announced its data endpoint and, where it runs a monitor, sent telemetry; a node that
exits meanwhile fails the start with its log's name. :meth:`Cluster.close` closes the clients, the
control connection and the collector, ends every process (SIGTERM, then SIGKILL), stops the broker
and closes every log, whatever failed before.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from adaptive.errors import AdaptiveError
from adaptive.lab.ports import free_port, wait_port

__all__ = ["EDGE_PROBE_INTERVAL_S", "Cluster", "NodeSpec", "ResultCheck", "stop_processes"]

# A source decides each frame on its own uplink estimate, so an edge probes its uplink every 0.25 s
# (on a slow link less often, within the monitor's 5% share; while the node's own activations
# measure the link, it is not probed).
EDGE_PROBE_INTERVAL_S = 0.25
_REQUEST_NUMBER = re.compile(r"-(\d+)(?:\.\d+)?$")


@dataclass(frozen=True)
class NodeSpec:
    """One node process.

    Attributes:
        name: Node id.
        device: Device profile it runs as (``--device``).
        next: The node its monitor probes (the next hop of its chain), or None.
        emulate: Pad its stages to the device's profiled latency (``--emulate``); False runs them
            at this machine's own speed.
        monitor: Run the monitor agent in-process (telemetry, link probes).
        probe_interval_s: Seconds between its monitor's link probes.
        interval_s: Seconds between its telemetry messages.
        extra: More ``adaptive node`` options (uplink emulation, ``--slowdown``, ``--bind`` …).
        netns: A :class:`adaptive.lab.netns.ShapedLink` to run it in (its namespace), or None.
        broker_host: Where it reaches the broker.
        next_host: Where it reaches the next node's probe sink.
    """

    name: str
    device: str
    next: str | None = None
    emulate: bool = True
    monitor: bool = True
    probe_interval_s: float = 1.0
    interval_s: float = 1.0
    extra: tuple[str, ...] = ()
    netns: Any = None
    broker_host: str = "127.0.0.1"
    next_host: str = "127.0.0.1"


def stop_processes(procs: Sequence[subprocess.Popen], timeout_s: float = 10.0) -> None:
    """Terminate processes, killing any that do not exit within ``timeout_s``."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class Cluster:
    """A broker and node processes on this machine, with clients, torn down as one.

    Args:
        model: Zoo model every node holds.
        nodes: The node processes.
        cluster: Cluster id (MQTT topics).
        logs: Directory for each process's log (``node-<name>.log``); None discards output.
        broker: ``embedded`` (amqtt, in this process) or ``mosquitto`` (a process; needs it installed).
        broker_bind: Address the broker listens on (``0.0.0.0`` when nodes run in namespaces).
        signing: The controller signs plans and rules and every node takes only signed ones: an
            Ed25519 key pair is made for the run (:attr:`sign_key`, :attr:`controller_key`).
    """

    def __init__(self, model: str, nodes: Sequence[NodeSpec], *, cluster: str = "lab",
                 logs: Path | None = None, broker: str = "embedded", broker_bind: str = "127.0.0.1",
                 signing: bool = False) -> None:
        if broker not in ("embedded", "mosquitto"):
            raise AdaptiveError(f"broker must be embedded or mosquitto, found '{broker}'")
        names = [n.name for n in nodes]
        if len(set(names)) != len(names):
            raise AdaptiveError(f"node names must be distinct, found {names}")
        unknown = [n.next for n in nodes if n.next is not None and n.next not in names]
        if unknown:
            raise AdaptiveError(f"a node probes '{unknown[0]}', which is not a node of the cluster {names}")
        self.model = model
        self.nodes = {n.name: n for n in nodes}
        self.cluster = cluster
        self.logs = logs
        self.broker_kind = broker
        self.broker_bind = broker_bind
        self.port = free_port()
        self.probe_ports = {n: free_port() for n in names}
        self.processes: dict[str, subprocess.Popen] = {}
        self.clients: list[Any] = []
        self.collector: Any = None
        self.control: Any = None
        self._broker: Any = None
        self._files: list[IO[Any]] = []
        self.sign_key: Path | None = None  # the controller's secret key, with signing
        self.controller_key: Path | None = None  # ... and its public key, given to every node
        if signing:
            from adaptive.runtime.signing import generate_signing_key

            folder = Path(tempfile.mkdtemp(prefix="adaptive-keys-"))
            self.sign_key = generate_signing_key(folder, "controller")
            self.controller_key = folder / "controller.ed25519.pub"

    @property
    def url(self) -> str:
        """The broker's URL from this process."""
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def address(self) -> Any:
        """The broker as a :class:`monitor.transport.BrokerAddress`."""
        from monitor.transport import parse_broker_url

        return parse_broker_url(self.url)

    @property
    def broker_process(self) -> subprocess.Popen | None:
        """The broker's process when it runs as one (Mosquitto), else None."""
        return self._broker.proc if isinstance(self._broker, _ProcessBroker) else None

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout_s: float = 120.0) -> Cluster:
        """Start the broker and every node, and wait until they are online (see the module docstring)."""
        from adaptive.control.telemetry import Collector
        from monitor.transport import MqttTransport

        try:
            self.start_broker()
            for name in self.nodes:
                self.spawn_node(name)
            self.control = MqttTransport(self.address, f"lab-{self.cluster}").start()
            self.collector = Collector(self.address, self.cluster).start()
            self.wait_online(timeout_s)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Close clients, connections and processes, stop the broker, close every log (idempotent)."""
        for client in self.clients:
            client.close()
        self.clients.clear()
        for conn in (self.control, self.collector):
            if conn is not None:
                conn.close()
        self.control = self.collector = None
        stop_processes(list(self.processes.values()))
        self.processes.clear()
        self.stop_broker()
        for f in self._files:
            f.close()
        self._files.clear()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stop_broker(self) -> None:
        """Stop the broker (a broker outage: every connection is lost until :meth:`start_broker`)."""
        if self._broker is not None:
            self._broker.close()
            self._broker = None

    def start_broker(self) -> None:
        """Start the broker on the cluster's port (again, after :meth:`stop_broker`)."""
        if self._broker is not None:
            return
        if self.broker_kind == "embedded":
            from adaptive.lab.broker import EmbeddedBroker

            self._broker = EmbeddedBroker(self.broker_bind, self.port).start()
            return
        if shutil.which("mosquitto") is None:
            raise AdaptiveError("broker mosquitto: the mosquitto binary is not installed")
        # its config beside the logs, or in a folder of its own: never in the caller's working directory
        folder = self.logs or Path(tempfile.mkdtemp(prefix="adaptive-lab-"))
        conf = folder / "mosquitto.conf"
        conf.write_text(f"listener {self.port} {self.broker_bind}\nallow_anonymous true\npersistence false\n")
        self._broker = _ProcessBroker(self._popen("broker", ["mosquitto", "-c", str(conf)]))
        try:
            wait_port(self.port)
        except TimeoutError as exc:
            raise AdaptiveError(f"broker mosquitto: {exc}") from None

    # ------------------------------------------------------------------ processes

    def node_args(self, name: str) -> list[str]:
        """The ``adaptive node`` command line of node ``name``."""
        n = self.nodes[name]
        args = [sys.executable, "-m", "adaptive", "node", "--node", n.name, "--broker",
                f"mqtt://{n.broker_host}:{self.port}", "--cluster", self.cluster, "--model", self.model,
                "--device", n.device]
        if n.emulate:
            args += ["--emulate", n.device]
        if self.controller_key is not None:
            args += ["--controller-key", str(self.controller_key)]
        if n.monitor:
            args += ["--monitor", "--probe-port", str(self.probe_ports[name]), "--probe-interval",
                     f"{n.probe_interval_s:g}", "--interval", f"{n.interval_s:g}"]
            if n.next is not None:
                args += ["--peers", f"{n.next}={n.next_host}:{self.probe_ports[n.next]}"]
        return [*args, *n.extra]

    def spawn_node(self, name: str) -> subprocess.Popen:
        """Start node ``name`` (again, after :meth:`kill`), in its namespace if it has one."""
        node = self.nodes[name]
        spawn = node.netns.popen if node.netns is not None else subprocess.Popen
        # a session of its own: Ctrl-C reaches this process, which stops the nodes in order
        self.processes[name] = self._popen(name, self.node_args(name), spawn=spawn, start_new_session=True)
        return self.processes[name]

    def controller_args(self, config: Path, policy: str, *extra: str) -> list[str]:
        """The ``adaptive controller`` command line for this cluster (signing, if it signs)."""
        args = [sys.executable, "-m", "adaptive", *extra, "controller", "--broker", self.url, "--config",
                str(config), "--policy", policy]
        return args + (["--sign-key", str(self.sign_key)] if self.sign_key is not None else [])

    def spawn(self, name: str, args: Sequence[str]) -> subprocess.Popen:
        """Start another process of the cluster (a controller, a client …), ended with the rest."""
        self.processes[name] = self._popen(name, list(args))
        return self.processes[name]

    def kill(self, name: str) -> None:
        """SIGKILL a process and reap it (a crash, as a test or a soak wants one)."""
        proc = self.processes.pop(name)
        proc.kill()
        proc.wait()

    def _popen(self, name: str, args: list[str], spawn: Any = subprocess.Popen,
               **kwargs: Any) -> subprocess.Popen:
        log_path = self.log_path(name)
        if log_path is None:
            return spawn(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
        log = log_path.open("a")
        self._files.append(log)
        return spawn(args, stdout=log, stderr=subprocess.STDOUT, **kwargs)

    def log_path(self, name: str) -> Path | None:
        """Where process ``name`` logs (``node-<name>.log`` for a node), or None without ``logs``."""
        if self.logs is None:
            return None
        return self.logs / f"{'node-' if name in self.nodes else ''}{name}.log"

    def wait_online(self, timeout_s: float = 120.0) -> None:
        """Wait until every node announced its data endpoint (and telemetry, if it monitors)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, p in self.processes.items():
                if p.poll() is not None:
                    where = f" (see {self.log_path(name)})" if self.logs is not None else ""
                    raise AdaptiveError(f"process {name} exited with code {p.returncode}{where}")
            views = self.collector.nodes()
            if all(self._online(views.get(name), n.monitor) for name, n in self.nodes.items()):
                return
            time.sleep(0.2)
        raise AdaptiveError(f"nodes did not come online within {timeout_s:g} s")

    @staticmethod
    def _online(view: Any, monitor: bool) -> bool:
        return (view is not None and view.status is not None and bool(view.status.data_endpoint)
                and view.status.state == "online" and (view.telemetry_count > 0 or not monitor))

    # ------------------------------------------------------------------ using it

    def client(self, name: str, **kwargs: Any) -> Any:
        """A started :class:`adaptive.runtime.client.InferenceClient` of this cluster, closed with it."""
        from adaptive.nn.zoo import default_input_shape
        from adaptive.runtime.client import InferenceClient

        kwargs.setdefault("input_shape", default_input_shape(self.model))
        client = InferenceClient(name, self.address, self.cluster, **kwargs).start()
        self.clients.append(client)
        return client

    def start_trace(self, trace_start: float) -> None:
        """Tell every emulated uplink to (re)start its replay at Unix time ``trace_start``."""
        self.emulate({"trace_start": trace_start})

    def emulate(self, fields: dict[str, Any]) -> None:
        """Publish an emulation command (``trace_start``, ``uplink_mbps``) to every node."""
        from adaptive.protocol.messages import Message

        self.control.publish(Message(f"adaptive/{self.cluster}/emulation",
                                     json.dumps({"v": 1, **fields}).encode(), 1))


class ResultCheck:
    """Every result against the whole model run here on the same input (a few inputs, cycled).

    Random weights and inputs; the comparison is the largest absolute error relative to the
    output's range, and whether the top-1 class agrees (an int8 or fp16 codec is lossy by design).
    """

    def __init__(self, model: str, shape: tuple[int, ...], count: int = 8) -> None:
        import torch

        from adaptive.nn.zoo import build_model

        rng = np.random.default_rng(0)
        self.inputs = [rng.standard_normal(shape).astype(np.float32) for _ in range(count)]
        net = build_model(model).eval()
        with torch.inference_mode():
            self.expected = [net(torch.from_numpy(x)).numpy() for x in self.inputs]
        self.errors: list[tuple[float, bool, bool]] = []  # (relative error, same top-1, lossless plan)
        self._lock = threading.Lock()

    def __call__(self, frame: Any) -> None:
        """Compare one result frame."""
        n = _REQUEST_NUMBER.search(frame.request_id)  # "<client>-<n>", and ".<retry>" on a retried attempt
        if n is None:
            return
        i = self.index(int(n.group(1)))
        want, got = self.expected[i], frame.tensor()
        err = float(np.abs(got - want).max() / max(float(np.ptp(want)), 1e-12))
        lossless = not any(c != "none" for c in frame.codecs)
        with self._lock:
            self.errors.append((err, bool(got.argmax() == want.argmax()), lossless))

    def index(self, n: int) -> int:
        """The input of a client's ``n``-th request."""
        return n % len(self.inputs)

    def summary(self) -> dict[str, Any]:
        """How the results compare with the whole model."""
        with self._lock:
            errors = list(self.errors)
        exact = [e for e, _, lossless in errors if lossless]
        return {"checked": len(errors), "same_top1": sum(same for _, same, _ in errors),
                "max_rel_error": round(max((e for e, _, _ in errors), default=0.0), 6),
                "lossless": len(exact), "lossless_max_rel_error": round(max(exact, default=0.0), 6)}


class _ProcessBroker:
    """A broker process with the embedded broker's ``close``."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def close(self) -> None:
        stop_processes([self.proc])
