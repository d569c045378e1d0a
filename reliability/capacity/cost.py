"""The cost of serving a load for some years: self-hosted against the hosted API.

Self-hosted = hardware (the nodes the load needs, bought once: `cost.node_price` each)
+ electricity (`energy_price_per_kwh` x the nodes' measured GPU power x hours)
+ staff (`staff_per_month` x months). The nodes the load needs come from a pool's capacity
baseline: requests/s per node, measured. Hosted = requests x the tokens a request took in
that test (prompt and completion, as billed) x the hosted price per million tokens.

Break-even: the load (requests/s) above which self-hosting costs less over the period, and
at the asked load, the month in which the hosted bill passes what self-hosting has cost
(hardware up front, then staff and electricity month by month). A price the config lacks
is listed in `missing`; what does not need it is still computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from reliability.capacity.models import CapacityTest
from reliability.config import Config

HOURS_PER_YEAR = 365 * 24
SECONDS_PER_MONTH = HOURS_PER_YEAR * 3600 / 12
MAX_NODES = 100_000  # where the break-even search gives up


@dataclass(frozen=True)
class Inputs:
    """What the report weighs; None: not known (a price not configured, nothing measured)."""

    qps: float
    years: float
    currency: str
    qps_per_node: float | None  # from the capacity baseline
    node_power_watts: float | None  # measured during it, else the config's
    prompt_tokens: float | None  # per request, from the same test
    completion_tokens: float | None
    node_price: float | None
    staff_per_month: float | None
    energy_price_per_kwh: float | None
    input_per_million: float | None
    output_per_million: float | None


@dataclass
class Report:
    inputs: Inputs
    nodes: int | None = None
    hardware: float | None = None
    energy: float | None = None
    staff: float | None = None
    self_hosted: float | None = None  # None unless every part is known
    hosted_per_request: float | None = None
    hosted: float | None = None
    break_even_qps: float | None = None
    break_even_month: float | None = None  # None: never within reach, or unknown
    missing: list[str] = field(default_factory=list)

    @property
    def months(self) -> float:
        return self.inputs.years * 12

    def self_hosted_after(self, month: float) -> float | None:
        """Cumulative self-hosted cost after `month` months (hardware at month 0)."""
        if self.self_hosted is None or self.hardware is None:
            return None
        running = (self.self_hosted - self.hardware) / self.months
        return self.hardware + running * month

    def hosted_after(self, month: float) -> float | None:
        return None if self.hosted is None else self.hosted / self.months * month


def inputs(config: Config, baseline: CapacityTest | None, *, qps: float, years: float) -> Inputs:
    """The report's inputs: prices from the config, capacity, power and tokens from the
    pool's `baseline` test (None: no test yet)."""
    c = config.cost
    energy_price = c.energy_price_per_kwh
    if energy_price is None and "energy_price_per_kwh" in config.dashboards.model_fields_set:
        energy_price = config.dashboards.energy_price_per_kwh
    power = c.node_power_watts
    if baseline is not None and baseline.gpu_power_watts is not None and baseline.nodes:
        power = baseline.gpu_power_watts / baseline.nodes
    return Inputs(
        qps=qps,
        years=years,
        currency=c.currency,
        qps_per_node=baseline.qps / baseline.nodes if baseline and baseline.nodes else None,
        node_power_watts=power,
        prompt_tokens=baseline.prompt_tokens if baseline else None,
        completion_tokens=baseline.completion_tokens if baseline else None,
        node_price=c.node_price,
        staff_per_month=c.staff_per_month,
        energy_price_per_kwh=energy_price,
        input_per_million=c.hosted.input_per_million_tokens,
        output_per_million=c.hosted.output_per_million_tokens,
    )


def _per_node(i: Inputs, years: float) -> tuple[float | None, float | None]:
    """(hardware, electricity) of one node over `years`."""
    energy = None
    if i.energy_price_per_kwh is not None and i.node_power_watts is not None:
        energy = i.energy_price_per_kwh * i.node_power_watts / 1000 * HOURS_PER_YEAR * years
    return i.node_price, energy


def nodes_for(qps: float, qps_per_node: float) -> int:
    """Nodes that carry `qps` at the measured requests/s per node (at least one)."""
    return max(1, math.ceil(qps / qps_per_node - 1e-9))


def report(i: Inputs) -> Report:
    r = Report(i)
    needs = {
        "a capacity baseline (reliability capacity test)": i.qps_per_node,
        "cost.node_price": i.node_price,
        "cost.staff_per_month": i.staff_per_month,
        "cost.energy_price_per_kwh": i.energy_price_per_kwh,
        "GPU power (measured by a capacity test with the daemon running, or "
        "cost.node_power_watts)": i.node_power_watts,
        "cost.hosted.input_per_million_tokens": i.input_per_million,
        "cost.hosted.output_per_million_tokens": i.output_per_million,
        "tokens per request (a capacity test)": i.prompt_tokens,
    }
    r.missing = [name for name, value in needs.items() if value is None]
    hardware, energy = _per_node(i, i.years)
    if i.qps_per_node:
        r.nodes = nodes_for(i.qps, i.qps_per_node)
        r.hardware = None if hardware is None else hardware * r.nodes
        r.energy = None if energy is None else energy * r.nodes
    if i.staff_per_month is not None:
        r.staff = i.staff_per_month * 12 * i.years
    parts = (r.hardware, r.energy, r.staff)
    if all(p is not None for p in parts):
        r.self_hosted = sum(p for p in parts if p is not None)
    per_year = SECONDS_PER_MONTH * 12
    if (
        i.prompt_tokens is not None
        and i.completion_tokens is not None
        and i.input_per_million is not None
        and i.output_per_million is not None
    ):
        billed = i.prompt_tokens * i.input_per_million + i.completion_tokens * i.output_per_million
        r.hosted_per_request = billed / 1e6
        r.hosted = r.hosted_per_request * i.qps * per_year * i.years
    if r.self_hosted is not None and r.hosted and r.hosted_per_request and i.qps_per_node:
        r.break_even_qps = break_even_qps(
            staff=r.staff or 0.0,
            per_node=(hardware or 0.0) + (energy or 0.0),
            qps_per_node=i.qps_per_node,
            hosted_per_qps=r.hosted_per_request * per_year * i.years,
        )
        up_front = r.hardware or 0.0
        monthly_gap = (r.hosted - (r.self_hosted - up_front)) / r.months
        if monthly_gap > 0:
            r.break_even_month = up_front / monthly_gap
    return r


def break_even_qps(
    *, staff: float, per_node: float, qps_per_node: float, hosted_per_qps: float
) -> float | None:
    """The least load at which self-hosting (staff, plus per_node for each node the load
    needs) costs no more than hosting it (hosted_per_qps per request/s); None if never."""
    for n in range(1, MAX_NODES + 1):
        self_cost = staff + n * per_node
        # Over ((n-1) x capacity, n x capacity] self-hosting costs self_cost; hosted grows.
        at = max((n - 1) * qps_per_node, self_cost / hosted_per_qps)
        if at <= n * qps_per_node:
            return at
    return None
