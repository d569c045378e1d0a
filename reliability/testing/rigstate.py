"""What tests say to the stand-ins: set GPU readings, break GPUs, log Xids, publish images.

A ``RigState`` wraps one state directory (layout in state.py). Every change is a locked
read-modify-write of the node document, so it is safe while stand-ins run over SSH::

    rig.set_gpu("gpu-1", 0, {"temperature.gpu": 91, "clocks_event_reasons.hw_slowdown": True})
    rig.set_gpu_status("gpu-1", 3, "lost")
    rig.add_xid("gpu-1", 3, 79)          # GPU slot 3, or a bus id like "00000000:5D:00.0"
    rig.publish_image("vllm/vllm-openai:v0.6.0")

GPUs are addressed by *slot*: their position on the board, which is also their
nvidia-smi index while no GPU before them is missing.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from reliability.testing import docker_format, docker_images, gpu_fields, state
from reliability.testing.dmesg import xid_line

GpuStatus = Literal["ok", "missing", "lost"]
_DERIVED = {"index", "count", "timestamp"}
BOOT_AGE_S = 86400.0  # nodes "booted" a day before the rig started, where /proc lacks btime


H100_NAME = "NVIDIA H100 80GB HBM3"
# Bus numbers of the eight GPUs of a typical HGX H100 board.
HGX_BUSES = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)


def default_gpu_values(node: str, slot: int) -> dict[str, Any]:
    """An idle H100 as driver 590 reports it; identities are stable per (node, slot)."""
    digest = hashlib.sha256(f"{node}/{slot}".encode()).hexdigest()
    bus = HGX_BUSES[slot % len(HGX_BUSES)] + 0x100 * (slot // len(HGX_BUSES))
    uuid = f"GPU-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"
    values: dict[str, Any] = {
        "name": H100_NAME,
        "serial": str(int(digest[32:44], 16))[:13].rjust(13, "1"),
        "uuid": uuid,
        "pci.bus_id": f"00000000:{bus:02X}:00.0",
        "pci.domain": "0x0000",
        "pci.bus": f"0x{bus:02X}",
        "pci.device": "0x00",
        "pci.baseClass": "0x3",
        "pci.subClass": "0x2",
        "pci.device_id": "0x233010DE",
        "pci.sub_device_id": "0x16C110DE",
        "pcie.link.gen.current": 5,
        "pcie.link.gen.gpucurrent": 5,
        "pcie.link.gen.max": 5,
        "pcie.link.gen.gpumax": 5,
        "pcie.link.width.current": 16,
        "pcie.link.width.max": 16,
        "display_mode": "[Requested functionality has been deprecated]",
        "display_attached": "No",
        "display_active": "Disabled",
        "persistence_mode": "Enabled",
        "addressing_mode": "None",
        "accounting.mode": "Disabled",
        "accounting.buffer_size": 4000,
        "vbios_version": "96.00.A5.00.01",
        "pstate": "P0",
        "clocks_event_reasons.supported": 0x1FF,
        "clocks_event_reasons.active": gpu_fields.REASON_BITS["gpu_idle"],
        "memory.total": 81559,
        "memory.reserved": 479,
        "memory.used": 0,
        "compute_mode": "Default",
        "compute_cap": "9.0",
        "utilization.gpu": 0,
        "utilization.memory": 0,
        "ecc.mode.current": "Enabled",
        "ecc.mode.pending": "Enabled",
        "remapped_rows.correctable": 0,
        "remapped_rows.uncorrectable": 0,
        "remapped_rows.pending": "No",
        "remapped_rows.failure": "No",
        "remapped_rows.histogram.max": 2560,
        "temperature.gpu": 41,
        "temperature.memory": 48,
        "power.management": "[Requested functionality has been deprecated]",
        "power.draw": 69.85,
        "power.draw.average": 69.85,
        "power.draw.instant": 69.62,
        "power.limit": 700.0,
        "enforced.power.limit": 700.0,
        "power.default_limit": 700.0,
        "power.min_limit": 200.0,
        "power.max_limit": 700.0,
        "edpp_multiplier": 100.0,
        "clocks.current.graphics": 345,
        "clocks.current.sm": 345,
        "clocks.current.memory": 2619,
        "clocks.current.video": 765,
        "clocks.max.graphics": 1980,
        "clocks.max.sm": 1980,
        "clocks.max.memory": 2619,
        "mig.mode.current": "Disabled",
        "mig.mode.pending": "Disabled",
    }
    for kind in ("corrected", "uncorrected"):
        for span in ("volatile", "aggregate"):
            for part in ("device_memory", "dram", "sram", "total"):
                values[f"ecc.errors.{kind}.{span}.{part}"] = 0
    # H100 retires rows, not pages: the retired_pages fields read [N/A] on it.
    return values


def host_boot_time() -> float:
    """This machine's boot time (`btime` of /proc/stat): the rig's nodes booted with it, so
    a reader that turns seconds since boot into Unix time with the node's /proc (as the
    GPU collector does over SSH) gets the times the tests logged."""
    try:
        with open("/proc/stat") as stat:
            for line in stat:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return time.time() - BOOT_AGE_S


def boot_lines(boot: float) -> list[list[Any]]:
    """The kernel lines of a node's boot, the NVIDIA module loaded 9.5 s in."""
    return [
        [boot, "Linux version 6.1.0-28-amd64 (debian-kernel@lists.debian.org) #1 SMP"],
        [
            boot + 9.5,
            f"NVRM: loading NVIDIA UNIX x86_64 Kernel Module  {gpu_fields.DRIVER_VERSION}",
        ],
    ]


def node_document(name: str, address: str | None, pool: str | None, gpus: int) -> dict[str, Any]:
    boot = host_boot_time()
    return {
        "name": name,
        "address": address,
        "pool": pool,
        "nvidia": {
            "driver_version": gpu_fields.DRIVER_VERSION,
            "cuda_version": gpu_fields.CUDA_VERSION,
            "failure": False,
            "gpus": [{"status": "ok", "values": default_gpu_values(name, i)} for i in range(gpus)],
        },
        "kernel": {
            "boot_time": boot,
            "boot_id": str(uuid.uuid4()),
            "lines": boot_lines(boot),
            # What an unprivileged login may read: kernel.dmesg_restrict=1 refuses dmesg;
            # a journal "denied" shows none of the system's messages (no adm or
            # systemd-journal group).
            "dmesg_restrict": False,
            "journal": "readable",
        },
        "docker": {"images": [], "containers": {}},
    }


class RigState:
    """Test-side API over a rig state directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def create(cls, root: Path) -> RigState:
        """Make an empty state directory (no nodes, an empty reachable registry)."""
        (Path(root) / "nodes").mkdir(parents=True, exist_ok=True)
        rig = cls(root)
        state.write_json(rig.root / "registry.json", {"reachable": True, "images": {}})
        state.write_json(rig.root / "nodes.json", {"addresses": {}})
        return rig

    # --- nodes -------------------------------------------------------------------------

    def add_node(
        self, name: str, *, address: str | None = None, pool: str | None = None, gpus: int = 8
    ) -> None:
        """Create (or recreate, with defaults) a node with ``gpus`` idle H100s."""
        state.write_json(state.node_path(self.root, name), node_document(name, address, pool, gpus))
        if address is not None:
            state.update_file(
                self.root / "nodes.json",
                lambda doc: doc.setdefault("addresses", {}).update({address: name}),
            )

    def reset_node(self, name: str) -> None:
        """Back to defaults (same address, pool and GPU count); containers are forgotten."""
        doc = self.read(name)
        self.add_node(
            name, address=doc["address"], pool=doc["pool"], gpus=len(doc["nvidia"]["gpus"])
        )

    def reset_gpus(self, node: str) -> bool:
        """Every GPU of the node back to its idle defaults (and a working driver); its
        kernel log and containers are kept. True if anything changed."""

        def change(doc: dict[str, Any]) -> bool:
            nvidia = doc["nvidia"]
            fresh = [
                {"status": "ok", "values": default_gpu_values(node, slot)}
                for slot in range(len(nvidia["gpus"]))
            ]
            changed = fresh != nvidia["gpus"] or bool(nvidia["failure"])
            nvidia.update(gpus=fresh, failure=False)
            return changed

        return bool(state.update_node(self.root, node, change))

    def nodes(self) -> list[str]:
        return sorted(path.stem for path in (self.root / "nodes").glob("*.json"))

    def read(self, node: str) -> dict[str, Any]:
        return state.read_node(self.root, node)

    # --- GPUs (nvidia-smi) ---------------------------------------------------------------

    def gpu(self, node: str, gpu: int) -> dict[str, Any]:
        """Stored values of one GPU slot by canonical field name, plus its ``status``."""
        entry = self.read(node)["nvidia"]["gpus"][gpu]
        return dict(entry["values"], status=entry.get("status", "ok"))

    def set_gpu(self, node: str, gpu: int, values: Mapping[str, Any]) -> None:
        """Set readings by nvidia-smi field name (aliases accepted; None prints [N/A]).

        Clock event reasons are bits of ``clocks_event_reasons.active``: set the mask, or
        name one reason (``clocks_event_reasons.hw_slowdown``) with True or False.
        """
        changes: dict[str, Any] = {}
        reasons: dict[int, bool] = {}
        for field, value in values.items():
            name = gpu_fields.canonical(field)
            if name is None or name in _DERIVED:
                raise ValueError(f"not a settable nvidia-smi field: {field!r}")
            reason = name.removeprefix("clocks_event_reasons.")
            if reason in gpu_fields.REASON_BITS:
                reasons[gpu_fields.REASON_BITS[reason]] = bool(value)
            else:
                changes[name] = value

        def change(doc: dict[str, Any]) -> None:
            stored = doc["nvidia"]["gpus"][gpu]["values"]
            stored.update(changes)
            mask = int(stored.get("clocks_event_reasons.active") or 0)
            for bit, on in reasons.items():
                mask = mask | bit if on else mask & ~bit
            stored["clocks_event_reasons.active"] = mask

        state.update_node(self.root, node, change)

    def set_gpu_status(self, node: str, gpu: int, status: GpuStatus) -> None:
        """``missing``: not enumerated at all; ``lost``: enumerated but its handle fails."""
        if status not in ("ok", "missing", "lost"):
            raise ValueError(f"unknown GPU status {status!r}")
        state.update_node(
            self.root, node, lambda doc: doc["nvidia"]["gpus"][gpu].update(status=status)
        )

    def set_driver_failure(self, node: str, failed: bool = True) -> None:
        """Make every nvidia-smi call fail as when the driver cannot be reached (exit 9)."""
        state.update_node(self.root, node, lambda doc: doc["nvidia"].update(failure=failed))

    def bus_id(self, node: str, gpu: int) -> str:
        return str(self.gpu(node, gpu)["pci.bus_id"])

    # --- kernel log (dmesg, journalctl) -------------------------------------------------

    def add_kernel_line(self, node: str, text: str, *, at: float | None = None) -> None:
        stamp = time.time() if at is None else at
        state.update_node(self.root, node, lambda doc: doc["kernel"]["lines"].append([stamp, text]))

    def fill_kernel_log(self, node: str, size: int, *, at: float | None = None) -> None:
        """Add about `size` bytes of ordinary kernel lines, each a millisecond apart,
        ending just before `at` (default now): a busy node's ring buffer."""
        end = time.time() if at is None else at
        text = "usb 1-1.4: reset high-speed USB device number 3 using xhci_hcd and a long tail"
        count = size // (len(text) + 16) + 1
        lines = [[end - (count - i) * 1e-3, f"{text} {i}"] for i in range(count)]
        state.update_node(self.root, node, lambda doc: doc["kernel"]["lines"].extend(lines))

    def reboot(self, node: str, *, uptime: float = 30.0) -> None:
        """The node booted `uptime` seconds ago: a new boot id, its log only the boot's."""

        def change(doc: dict[str, Any]) -> None:
            boot = time.time() - uptime
            doc["kernel"].update(boot_time=boot, boot_id=str(uuid.uuid4()), lines=boot_lines(boot))

        state.update_node(self.root, node, change)

    def set_kernel_log_access(
        self, node: str, *, dmesg_restrict: bool | None = None, journal: bool | None = None
    ) -> None:
        """What the login user may read: `dmesg_restrict` True refuses dmesg (as
        kernel.dmesg_restrict=1 does), `journal` False hides the system journal."""

        def change(doc: dict[str, Any]) -> None:
            if dmesg_restrict is not None:
                doc["kernel"]["dmesg_restrict"] = dmesg_restrict
            if journal is not None:
                doc["kernel"]["journal"] = "readable" if journal else "denied"

        state.update_node(self.root, node, change)

    def add_xid(
        self,
        node: str,
        pci_bus_id: str | int,
        code: int,
        message: str | None = None,
        *,
        pid: int | None = None,
        process: str | None = None,
        at: float | None = None,
    ) -> str:
        """Log an NVRM Xid line for a GPU (slot number or PCI bus id); returns the text."""
        bus_id = self.bus_id(node, pci_bus_id) if isinstance(pci_bus_id, int) else pci_bus_id
        text = xid_line(bus_id, code, message, pid=pid, process=process)
        self.add_kernel_line(node, text, at=at)
        return text

    # --- images and containers (docker) --------------------------------------------------

    def publish_image(self, ref: str, digest: str | None = None) -> str:
        """Make ``ref`` pullable from the registry; returns its digest (stable per ref)."""
        digest = digest or "sha256:" + hashlib.sha256(f"published:{ref}".encode()).hexdigest()
        state.update_file(
            self.root / "registry.json",
            lambda doc: doc.setdefault("images", {}).update({ref: digest}),
        )
        return digest

    def break_image(self, digest: str, path: str = "/v1/*") -> None:
        """Containers of this digest start answering 500 on `path` (a bad build: its health
        endpoint still answers 200, so only a real completion finds it out)."""
        state.update_file(
            self.root / "registry.json",
            lambda doc: doc.setdefault("broken", {}).update({digest: path}),
        )

    def slow_image(self, digest: str, delay_s: float, path: str = "/v1/chat/completions") -> None:
        """Containers of this digest answer `path` `delay_s` late (a slower build: it serves
        every request, just fewer of them a second)."""
        state.update_file(
            self.root / "registry.json",
            lambda doc: doc.setdefault("slow", {}).update({digest: [path, delay_s]}),
        )

    def set_registry_reachable(self, reachable: bool) -> None:
        """An unreachable registry makes pulls (and runs of absent images) time out."""
        state.update_file(self.root / "registry.json", lambda doc: doc.update(reachable=reachable))

    def load_image(self, node: str, ref: str) -> str:
        """Put ``ref`` on the node as if pulled (publishing it first if unknown); its digest."""
        digest = dict(state.read_json(self.root / "registry.json").get("images", {})).get(ref)
        digest = digest or self.publish_image(ref)
        state.update_node(
            self.root, node, lambda doc: docker_images.add_local_image(doc, ref, digest)
        )
        return str(digest)

    def container(self, node: str, name: str) -> dict[str, Any] | None:
        """The container as ``docker inspect`` shows it, or None."""
        record = self.read(node)["docker"]["containers"].get(name)
        return docker_format.inspect_container(record) if record else None

    def set_container_health(self, node: str, name: str, status: str | None) -> None:
        """Give the container a ``State.Health`` (``healthy``, ``unhealthy``...); None drops it."""

        def change(doc: dict[str, Any]) -> None:
            record_state = doc["docker"]["containers"][name]["State"]
            record_state.pop("Health", None)
            if status is not None:
                failing = 0 if status == "healthy" else 3
                record_state["Health"] = {"Status": status, "FailingStreak": failing, "Log": []}

        state.update_node(self.root, node, change)
