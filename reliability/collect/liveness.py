"""The liveness probe: a TCP connect to each node's sshd and serving port, every second.

Cheap enough for a large fleet every second: one asyncio loop on one thread opens every
connect at once (no thread per node), each bounded by `timeout`, and closes it as soon as
it is established (nothing is sent). A refused connect (nothing listens: sshd or the
engine died) fails at once; one with no answer at all (a cut network, a dead host) after
`timeout`. A node with a failing port is probed again at once, every `timeout`, until it
answers: a cut is confirmed by several consecutive failed connects within about a second,
not one per interval.

Each round of a node is published into the snapshot (collector `liveness`, the node as
target): `node_liveness_up` and `node_liveness_since_timestamp_seconds` (when the first
connect of the current state was sent) per signal (`ssh`, `serving`). `on_change` is
called when a port changes state, so detection evaluates at once (detect/loop.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from reliability import catalog
from reliability.collect.base import LIVENESS, Sample
from reliability.collect.snapshot import Snapshot

log = logging.getLogger(__name__)

SSH, SERVING = "ssh", "serving"
STOP_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class LivenessSpec:
    """A node to probe: its address and, per signal, the port (`ssh` always; `serving`
    where the node serves a service's pool)."""

    node: str
    host: str
    ports: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class PortState:
    """A port's current state: up or not, since when (the send time of the first connect
    that found it so), and why not (`refused`, `timeout`, the OS error)."""

    up: bool
    since: float
    reason: str = ""


async def connect(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection to host:port is established within `timeout` (closed at
    once), else why not."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    writer.close()
    return None


class LivenessProbe:
    """Probes `specs` on a thread of its own from `start()` to `stop()`; `states` holds
    the latest state of every probed port. `clock` is Unix time (tests pass theirs)."""

    def __init__(
        self,
        specs: list[LivenessSpec],
        snapshot: Snapshot,
        *,
        interval: float,
        timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if timeout >= interval:
            raise ValueError("the connect timeout must be below the interval")
        self._specs = specs
        self._snapshot = snapshot
        # Whether this daemon probes a node: with several daemons, only its share
        # (cluster/); the others' nodes are theirs to judge.
        self.owns: Callable[[str], bool] = lambda _node: True
        self._interval = interval
        self._timeout = timeout
        self._clock = clock
        self.states: dict[tuple[str, str], PortState] = {}
        self._on_change: Callable[[], object] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    async def probe(self, spec: LivenessSpec) -> bool:
        """One round of a node: connect to each of its ports at once, record and publish
        the results; True when a port changed state."""
        sent, start = self._clock(), time.monotonic()
        signals = list(spec.ports)
        results = await asyncio.gather(
            *(connect(spec.host, spec.ports[s], self._timeout) for s in signals)
        )
        changed = False
        for signal, reason in zip(signals, results, strict=True):
            key, up = (spec.node, signal), reason is None
            old = self.states.get(key)
            if old is None or old.up != up:
                changed = True
                self.states[key] = PortState(up, sent, reason or "")
                if old is not None or not up:
                    log.warning(
                        "node %s: %s port %d %s",
                        spec.node,
                        signal,
                        spec.ports[signal],
                        "answers again" if up else f"does not answer ({reason})",
                    )
        samples = []
        for signal in signals:
            state = self.states[(spec.node, signal)]
            samples.append(Sample(catalog.NODE_LIVENESS_UP, (spec.node, signal), float(state.up)))
            samples.append(Sample(catalog.NODE_LIVENESS_SINCE, (spec.node, signal), state.since))
        self._snapshot.publish(
            LIVENESS,
            spec.node,
            ok=True,
            duration=time.monotonic() - start,
            samples=samples,
            quiet_repeat=True,  # an unchanged round is no news for detection
        )
        return changed

    async def _watch(self, spec: LivenessSpec) -> None:
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            if not self.owns(spec.node):
                for signal in spec.ports:
                    self.states.pop((spec.node, signal), None)
                self._snapshot.forget(LIVENESS, spec.node)
                await asyncio.sleep(self._interval)
                continue
            try:
                changed = await self.probe(spec)
            except Exception:  # a bug must cost one round of one node, not the probe
                log.exception("liveness probe of %s failed", spec.node)
                changed = False
            if changed and self._on_change is not None:
                self._on_change()
            failing = any(not self.states[(spec.node, s)].up for s in spec.ports)
            pause = self._timeout if failing else self._interval
            await asyncio.sleep(max(0.0, began + pause - loop.time()))

    async def _main(self, started: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        started.set()
        tasks = [asyncio.create_task(self._watch(spec)) for spec in self._specs]
        await self._stopping.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def start(self, on_change: Callable[[], object] | None = None) -> None:
        """Probe on a thread until `stop()`; `on_change` is called (on that thread) when a
        port changes state."""
        self._on_change = on_change
        started = threading.Event()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._main(started),), name="liveness", daemon=True
        )
        self._thread.start()
        started.wait(STOP_TIMEOUT)

    def stop(self) -> None:
        if self._loop is None or self._stopping is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(STOP_TIMEOUT)
