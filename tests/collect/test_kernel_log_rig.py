"""XIDs from the kernel log over the rig's real sshd, read incrementally.

Each node runs the rig's `journalctl` and `dmesg` stand-ins (systemd 252 and util-linux
shapes) over its simulated kernel log; `journal` readable or not picks which one the
collector ends up reading (journalctl first, else dmesg), so each specification runs on
both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from reliability import catalog
from reliability.collect.base import Sample
from reliability.collect.gpu_smi import SmiGpuCollector
from reliability.collect.kernel_log import MARK, KernelLog
from reliability.config import Config
from reliability.detect.evaluator import Evaluator
from reliability.ssh import NodeShell, SshPool
from reliability.testing import dmesg, journalctl
from reliability.testing.fleet import Fleet

NODE = "gpu-1"
START = 1_750_000_000.0
SOURCES = ["journalctl", "dmesg"]


@dataclass
class Recorder:
    """A NodeShell that keeps what each kernel log read sent back over SSH."""

    shell: NodeShell
    reads: list[tuple[str, int]] = field(default_factory=list)  # (script, bytes that crossed)

    def run(self, command: str, *, timeout: float):
        result = self.shell.run(command, timeout=timeout)
        if MARK in command:
            self.reads.append((command, len(result.stdout.encode())))
        return result


@pytest.fixture
def pool():
    ssh = SshPool()
    yield ssh
    ssh.close()


def reader(rig: Fleet, pool: SshPool, source: str, command: str | None = None):
    """The GPU collector of NODE, its journal readable when `source` is journalctl."""
    rig.state.set_kernel_log_access(NODE, journal=source == "journalctl")
    recorder = Recorder(NodeShell(pool, rig.ssh_target(NODE)))
    collector = SmiGpuCollector(
        {NODE: (recorder, 8)}, timeout=20.0, kernel_log_commands={NODE: command}
    )
    return collector, recorder


def xids(samples: list[Sample]) -> dict[tuple[str, ...], float]:
    return {s.labels[1:3]: s.value for s in samples if s.metric is catalog.GPU_XID_ERRORS}


def readable(samples: list[Sample]) -> float | None:
    found = [s.value for s in samples if s.metric is catalog.NODE_KERNEL_LOG_READABLE]
    return found[0] if found else None


@pytest.mark.parametrize("source", SOURCES)
def test_the_newest_xid_of_a_ring_buffer_over_1_mib_is_seen(rig: Fleet, pool, source):
    rig.state.fill_kernel_log(NODE, 1_200_000)
    rig.state.add_xid(NODE, 2, 79)
    document = rig.state.read(NODE)
    assert len(dmesg.render(document, [])[0]) > 1 << 20
    assert len(journalctl.render(document, ["-k"])[0]) > 1 << 20
    collector, recorder = reader(rig, pool, source)

    samples = collector.collect(NODE)

    assert xids(samples) == {("2", "79"): 1}
    assert readable(samples) == 1
    script, crossed = recorder.reads[-1]
    assert f"{{ {source} " in script
    assert crossed < 600_000  # a bounded tail, never the whole buffer


@pytest.mark.parametrize("source", SOURCES)
def test_a_second_read_sends_only_the_new_lines(rig: Fleet, pool, source):
    collector, recorder = reader(rig, pool, source)
    rig.state.fill_kernel_log(NODE, 200_000)
    collector.collect(NODE)
    assert recorder.reads[-1][1] > 50_000  # the newest 1000 lines

    rig.state.add_xid(NODE, 0, 48)
    second = collector.collect(NODE)
    third = collector.collect(NODE)

    assert xids(second) == xids(third) == {("0", "48"): 1}
    *_, new, nothing = (crossed for _, crossed in recorder.reads)
    assert new < 600 and nothing < 400  # the XID line (and the cursor), then nothing


@pytest.mark.parametrize("source", SOURCES)
def test_a_rebooted_node_is_read_from_its_new_boot(rig: Fleet, pool, source):
    collector, _ = reader(rig, pool, source)
    rig.state.add_xid(NODE, 1, 13)
    assert xids(collector.collect(NODE)) == {("1", "13"): 1}

    rig.state.reboot(NODE, uptime=20.0)  # timestamps go back; the journal's boot id changes
    rig.state.set_kernel_log_access(NODE, journal=source == "journalctl")
    rig.state.add_xid(NODE, 1, 79)
    after = collector.collect(NODE)
    again = collector.collect(NODE)

    assert xids(after) == xids(again) == {("1", "13"): 1, ("1", "79"): 1}


def test_a_configured_kernel_log_command_is_the_one_run(rig: Fleet, pool):
    collector, recorder = reader(rig, pool, "journalctl", command="env dmesg")
    rig.state.add_xid(NODE, 3, 94)

    samples = collector.collect(NODE)

    assert xids(samples) == {("3", "94"): 1}
    [(script, _)] = recorder.reads
    assert "{ env dmesg 2>&1;" in script and "journalctl" not in script


def evaluate(evaluator: Evaluator, samples: list[Sample], now: float):
    up = Sample(catalog.TARGET_UP, ("gpu", NODE), 1.0)
    return [t for t in evaluator.evaluate([up, *samples], now) if t.rule == "xid-detection-off"]


def test_an_unreadable_kernel_log_is_a_warning_naming_the_fix_until_it_reads(rig: Fleet, pool):
    collector, _ = reader(rig, pool, "dmesg")
    rig.state.set_kernel_log_access(NODE, dmesg_restrict=True, journal=False)
    evaluator = Evaluator(Config.model_validate({"nodes": rig.config_sections()["nodes"]}))
    rig.state.add_xid(NODE, 0, 79)

    denied = collector.collect(NODE)
    opened = evaluate(evaluator, denied, START) + evaluate(evaluator, denied, START + 65)

    assert readable(denied) == 0 and xids(denied) == {}
    assert readable(collector.collect(NODE)) == 0  # still off, not flapping
    [firing] = opened
    assert (firing.kind, firing.severity) == ("firing", "warning")
    assert firing.title.startswith(f"XID detection off on {NODE}")
    for fix in ("sysctl kernel.dmesg_restrict=0", "`adm`", "systemd-journal", "sudo -n dmesg"):
        assert fix in firing.summary

    rig.state.set_kernel_log_access(NODE, dmesg_restrict=False)
    back = collector.collect(NODE)
    assert readable(back) == 1
    assert xids(back) == {("0", "79"): 1}  # the XID it could not see is read now
    assert evaluate(evaluator, back, START + 70) == []
    [resolved] = evaluate(evaluator, back, START + 135)
    assert resolved.kind == "resolved"


def test_a_cursor_journalctl_refuses_is_dropped_and_the_tail_read(rig: Fleet, pool):
    shell = NodeShell(pool, rig.ssh_target(NODE))
    kernel_log = KernelLog()
    journal = kernel_log.order()[0]
    rig.state.add_xid(NODE, 0, 79)
    kernel_log.cursor = "s=from-another-machine"

    refused = kernel_log.read(journal, shell.run(kernel_log.script(journal), timeout=10).stdout)
    tail = kernel_log.read(journal, shell.run(kernel_log.script(journal), timeout=10).stdout)

    assert refused.again and refused.problem is None
    assert [(x.code, x.pci_bus_id) for x in tail.xids] == [(79, "0000:18:00")]
    assert kernel_log.cursor is not None and kernel_log.cursor.startswith("s=")
