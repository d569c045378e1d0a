"""The `nvidia-smi --query-gpu` vocabulary: valid field names, aliases and units.

Taken from a real driver 590 capture of an H100 80GB HBM3 (``--help-query-gpu`` and a
full ``--query-gpu`` CSV), so that a field the real tool rejects is rejected here and a
field it knows is accepted, even where the rig only answers ``[N/A]``. Standard library
only: the stand-in executable imports it on every call.
"""

from __future__ import annotations

DRIVER_VERSION = "590.48.01"
CUDA_VERSION = "13.1"

# Every --query-gpu field of driver 590, with the unit its header shows.
_FIELDS_WITH_UNITS = """
timestamp driver_version vgpu_driver_capability.heterogenous_multivGPU count name serial
uuid pci.bus_id pci.domain pci.bus pci.device pci.baseClass pci.subClass pci.device_id
pci.sub_device_id vgpu_device_capability.fractional_multiVgpu
vgpu_device_capability.heterogeneous_timeSlice_profile
vgpu_device_capability.heterogeneous_timeSlice_sizes
vgpu_device_capability.homogeneous_placements vgpu_device_capability.mig_timeSlicing
vgpu_device_capability.mig_timeSlicing_mode pcie.link.gen.current pcie.link.gen.gpucurrent
pcie.link.gen.max pcie.link.gen.gpumax pcie.link.gen.hostmax pcie.link.width.current
pcie.link.width.max index display_mode display_attached display_active persistence_mode
addressing_mode accounting.mode accounting.buffer_size driver_model.current
driver_model.pending vbios_version inforom.img inforom.oem inforom.ecc inforom.pwr
inforom.checksum_validation gpu_recovery_action gom.current gom.pending fan.speed:%
pstate clocks_event_reasons.supported clocks_event_reasons.active
clocks_event_reasons.gpu_idle clocks_event_reasons.applications_clocks_setting
clocks_event_reasons.sw_power_cap clocks_event_reasons.hw_slowdown
clocks_event_reasons.hw_thermal_slowdown clocks_event_reasons.hw_power_brake_slowdown
clocks_event_reasons.sw_thermal_slowdown clocks_event_reasons.sync_boost
clocks_event_reasons_counters.sw_power_cap:us clocks_event_reasons_counters.sync_boost:us
clocks_event_reasons_counters.sw_thermal_slowdown:us
clocks_event_reasons_counters.hw_thermal_slowdown:us
clocks_event_reasons_counters.hw_power_brake_slowdown:us memory.total:MiB
memory.reserved:MiB memory.used:MiB memory.free:MiB compute_mode compute_cap
utilization.gpu:% utilization.memory:% utilization.encoder:% utilization.decoder:%
utilization.jpeg:% utilization.ofa:% encoder.stats.sessionCount encoder.stats.averageFps
encoder.stats.averageLatency dramEncryption.mode.current dramEncryption.mode.pending
ecc.mode.current ecc.mode.pending
retired_pages.single_bit_ecc.count retired_pages.double_bit.count retired_pages.pending
remapped_rows.correctable remapped_rows.uncorrectable remapped_rows.pending
remapped_rows.failure remapped_rows.histogram.max remapped_rows.histogram.high
remapped_rows.histogram.partial remapped_rows.histogram.low remapped_rows.histogram.none
temperature.gpu temperature.gpu.tlimit temperature.memory power.management power.draw:W
power.draw.average:W power.draw.instant:W power.limit:W enforced.power.limit:W
power.default_limit:W power.min_limit:W power.max_limit:W module.power.draw.average:W
module.power.draw.instant:W module.power.limit:W module.enforced.power.limit:W
module.power.default_limit:W module.power.min_limit:W module.power.max_limit:W
power_smoothing.delayed_power_smoothing_supported power_smoothing.primary_power_floor:W
power_smoothing.secondary_power_floor:W
power_smoothing.min_primary_floor_activation_offset:W
power_smoothing.min_primary_floor_activation_point:W power_smoothing.window_multiplier:ms
power_smoothing.curr_profile.secondary_power_floor:W
power_smoothing.curr_profile.primary_floor_act_window_multiplier
power_smoothing.curr_profile.primary_floor_tar_window_multiplier
power_smoothing.curr_profile.primary_floor_act_offset:W
power_smoothing.admin_override.secondary_power_floor:W
power_smoothing.admin_override.primary_floor_act_window_multiplier
power_smoothing.admin_override.primary_floor_tar_window_multiplier
power_smoothing.admin_override.primary_floor_act_offset:W edpp_multiplier:%
clocks.current.graphics:MHz clocks.current.sm:MHz clocks.current.memory:MHz
clocks.current.video:MHz clocks.applications.graphics:MHz clocks.applications.memory:MHz
clocks.default_applications.graphics:MHz clocks.default_applications.memory:MHz
clocks.max.graphics:MHz clocks.max.sm:MHz clocks.max.memory:MHz mig.mode.current
mig.mode.pending gsp.mode.current gsp.mode.default c2c.mode protected_memory.total:MiB
protected_memory.used:MiB protected_memory.free:MiB fabric.state fabric.status
fabric.cliqueId fabric.clusterUuid fabric.health.summary fabric.health.bandwidth
fabric.health.route_recovery_in_progress fabric.health.route_unhealthy
fabric.health.access_timeout_recovery fabric.health.incorrect_configuration
platform.chassis_serial_number platform.slot_number platform.tray_index platform.host_id
platform.peer_type platform.module_id platform.gpu_fabric_guid hostname
"""
_ECC_PARTS = "device_memory dram register_file l1_cache l2_cache texture_memory cbu sram total"
_ECC_SRAM = (
    "volatile.sram.parity volatile.sram.secded aggregate.sram.parity aggregate.sram.secded "
    "aggregate.sram.thresholdExceeded aggregate.sram.l2 aggregate.sram.sm aggregate.sram.mcu "
    "aggregate.sram.pcie aggregate.sram.other"
)


def _build_units() -> dict[str, str | None]:
    units: dict[str, str | None] = {}
    for token in _FIELDS_WITH_UNITS.split():
        name, _, unit = token.partition(":")
        units[name] = unit or None
    for kind in ("corrected", "uncorrected"):
        for span in ("volatile", "aggregate"):
            for part in _ECC_PARTS.split():
                units[f"ecc.errors.{kind}.{span}.{part}"] = None
    for tail in _ECC_SRAM.split():
        units[f"ecc.errors.uncorrected.{tail}"] = None
    return units


UNITS = _build_units()

REASON_BITS = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
}
MASKS = {"clocks_event_reasons.supported", "clocks_event_reasons.active"}
TWO_DECIMALS = {"edpp_multiplier"}


def _build_aliases() -> dict[str, str]:
    aliases = {
        "gpu_name": "name",
        "gpu_serial": "serial",
        "gpu_uuid": "uuid",
        "gpu_bus_id": "pci.bus_id",
        "inforom.image": "inforom.img",
        "inforom.power": "inforom.pwr",
        "gpu_operation_mode.current": "gom.current",
        "gpu_operation_mode.pending": "gom.pending",
        "retired_pages.sbe": "retired_pages.single_bit_ecc.count",
        "retired_pages.dbe": "retired_pages.double_bit.count",
        "remapped_rows.sbe": "remapped_rows.correctable",
        "remapped_rows.dbe": "remapped_rows.uncorrectable",
        "gpu.power.draw.average": "power.draw.average",
        "gpu.power.draw.instant": "power.draw.instant",
        "gpu.power.requested_limit": "power.limit",
        "gpu.power.current_limit": "enforced.power.limit",
        "gpu.power.default_limit": "power.default_limit",
        "gpu.power.min_limit": "power.min_limit",
        "gpu.power.max_limit": "power.max_limit",
        "module.power.requested_limit": "module.power.limit",
        "module.power.current_limit": "module.enforced.power.limit",
        "clocks.gr": "clocks.current.graphics",
        "clocks.sm": "clocks.current.sm",
        "clocks.mem": "clocks.current.memory",
        "clocks.video": "clocks.current.video",
        "clocks.applications.gr": "clocks.applications.graphics",
        "clocks.applications.mem": "clocks.applications.memory",
        "clocks.default_applications.gr": "clocks.default_applications.graphics",
        "clocks.default_applications.mem": "clocks.default_applications.memory",
        "clocks.max.gr": "clocks.max.graphics",
        "clocks.max.mem": "clocks.max.memory",
    }
    for reason in ("supported", "active", *REASON_BITS):
        aliases[f"clocks_throttle_reasons.{reason}"] = f"clocks_event_reasons.{reason}"
    return aliases


ALIASES = _build_aliases()


def canonical(field: str) -> str | None:
    """The canonical name of a --query-gpu field, or None if the real tool rejects it."""
    name = ALIASES.get(field, field)
    return name if name in UNITS else None
