"""Alertmanager's webhook payload (version 4), as it arrives: notify/webhook/webhook.go's
Message, template.Data and template.Alert.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints


class _Payload(BaseModel):
    # Unknown fields are ignored: a newer Alertmanager may add some.
    model_config = ConfigDict(extra="ignore", frozen=True)


class AlertmanagerAlert(_Payload):
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: AwareDatetime = Field(alias="startsAt")
    # Go's zero time (0001-01-01T00:00:00Z) while a firing alert's end is unknown.
    ends_at: AwareDatetime = Field(alias="endsAt")
    generator_url: str = Field(alias="generatorURL")
    # Alertmanager's label-set hash, "%016x"; also what keeps the incident key short.
    fingerprint: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]


class AlertmanagerWebhook(_Payload):
    version: Literal["4"]
    group_key: str = Field(alias="groupKey")
    # Alerts dropped by the receiver's max_alerts; older Alertmanagers do not send it.
    truncated_alerts: int = Field(0, alias="truncatedAlerts", ge=0)
    receiver: str
    status: Literal["firing", "resolved"]
    alerts: list[AlertmanagerAlert]
    group_labels: dict[str, str] = Field(alias="groupLabels")
    common_labels: dict[str, str] = Field(alias="commonLabels")
    common_annotations: dict[str, str] = Field(alias="commonAnnotations")
    external_url: str = Field(alias="externalURL")
