"""Runbook actions: one module per `action:` (its step, plan and checks; see base.py), and
`REGISTRY`, the one list of them. Adding an action is a new module here and its line below;
the order is the order the runbook file's errors name them in."""

from __future__ import annotations

from reliability.runbooks.actions import (
    capacity_gate,
    confirm,
    deploy_image,
    drain,
    http_check,
    lb_route,
    lb_set_pool,
    lb_weights,
    node_state,
    notify,
    pool_compare,
    ready,
    record_deploy,
    rolling_deploy,
    ssh,
)
from reliability.runbooks.actions.base import Action, Registry

REGISTRY = Registry(
    [
        ssh.SshAction(),
        http_check.HttpCheckAction(),
        ready.ReadyAction(),
        lb_set_pool.LbSetPoolAction(),
        drain.DrainAction(),
        lb_route.LbRouteAction(),
        deploy_image.DeployImageAction(),
        rolling_deploy.RollingDeployAction(),
        record_deploy.RecordDeployAction(),
        confirm.ConfirmAction(),
        notify.NotifyAction(),
        node_state.NodeStateAction(),
        capacity_gate.CapacityGateAction(),
        lb_weights.LbWeightsAction(),
        pool_compare.PoolCompareAction(),
    ]
)

__all__ = ["REGISTRY", "Action", "Registry"]
