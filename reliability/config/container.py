"""The container a service runs on each node (`services[].container`): everything a
`docker run` of the serving engine needs, so that every deploy (failover, rollback,
blue-green to a new image) starts the same engine with the same model, environment and
volumes.

Every value reaches a shell as one quoted word, and the fields that docker would read as
more than a value (volume paths, option values) only accept what docker means by them.
Secrets are never written here: an environment variable is either a plain value or
`{value_env: VAR}` / `{value_file: PATH}`, read on this host when a deploy sends it
(see Config.container_secrets) and shown masked everywhere else.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from reliability.config.errors import Loc
from reliability.config.fields import Strict, matching

# Environment names that hold a secret by their name: a plain value there is refused.
SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
ContainerName = Annotated[
    str,
    matching(
        r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}", "use letters, digits, '_', '.', '-' (docker's rule)"
    ),
]
EnvName = Annotated[
    str, matching(r"[A-Za-z_][A-Za-z0-9_]*", "an environment name: letters, digits, '_'")
]
# A bind mount (absolute host path) or a named volume, a container path, then ro/rw.
_PATH = r"/[A-Za-z0-9._/@+-]*"
Volume = Annotated[
    str,
    matching(
        rf"(?:{_PATH}|[A-Za-z0-9][A-Za-z0-9_.-]*):{_PATH}(?::(?:ro|rw))?",
        "write HOST_PATH:CONTAINER_PATH[:ro] (or VOLUME_NAME:CONTAINER_PATH); paths take "
        "only letters, digits and . _ / @ + - (no spaces, quotes or shell characters)",
    ),
]
Port = Annotated[
    str,
    matching(
        r"(?:\d{1,3}(?:\.\d{1,3}){3}:)?\d{1,5}:\d{1,5}(?:/(?:tcp|udp))?",
        "write HOST_PORT:CONTAINER_PORT, e.g. 8000:8000 (or IP:HOST_PORT:CONTAINER_PORT)",
    ),
]
Gpus = Annotated[
    str, matching(r"all|\d{1,3}|device=\d{1,3}(?:,\d{1,3})*", "write all, a count, or device=0,1")
]
Size = Annotated[str, matching(r"\d+[bkmgBKMG]?", "write a size such as 16g or 512m")]
Ulimit = Annotated[
    str | int,
    AfterValidator(lambda v: _ulimit(v)),
]
LabelKey = Annotated[
    str, matching(r"[A-Za-z0-9][A-Za-z0-9._/-]*", "use letters, digits, '.', '_', '/', '-'")
]


def _ulimit(value: str | int) -> str:
    text = str(value)
    if not re.fullmatch(r"-?\d+(?::-?\d+)?", text):
        raise ValueError(f"{text!r}: write a number or SOFT:HARD (-1 is unlimited)")
    return text


class SecretValue(Strict):
    """An environment value read on this host when a deploy sends it: from one of its
    environment variables (`value_env`) or a file (`value_file`)."""

    value_env: EnvName | None = None
    value_file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretValue:
        if (self.value_env is None) == (self.value_file is None):
            raise ValueError("give exactly one of `value_env` or `value_file`")
        return self

    def shown(self) -> str:
        """Where the value comes from, as a plan shows it (never the value)."""
        return f"${self.value_env}" if self.value_env else f"file {self.value_file}"


class ContainerSpec(Strict):
    """How the service's container runs on a node; the `docker run` every deploy sends."""

    name: ContainerName | None = Field(
        None, description="the container's name on every node (default: the service's name)"
    )
    image_policy: Literal["digest", "tag"] = Field(
        "digest",
        description="digest: every image deployed (and the service's `image`) is pinned "
        "REF@sha256:…; tag: a tag is accepted and runs whatever it names when pulled",
    )
    command: list[str] = Field(
        default_factory=list,
        description="replaces the image's entrypoint: the executable, then its first words",
    )
    args: list[str] = Field(
        default_factory=list, description="the engine's arguments, e.g. --model NAME"
    )
    env: dict[EnvName, str | SecretValue] = Field(
        default_factory=dict,
        description="plain values, or {value_env: VAR} / {value_file: PATH} for secrets",
    )
    volumes: list[Volume] = Field(default_factory=list)
    ports: list[Port] | None = Field(
        None, description="published ports; default: the service's port on the same port"
    )
    gpus: Gpus | None = Field(None, description="default: all, on a node that has GPUs")
    ipc: Literal["host", "private", "shareable"] | None = None
    shm_size: Size | None = None
    ulimits: dict[Annotated[str, matching(r"[a-z]+", "a ulimit name, e.g. memlock")], Ulimit] = (
        Field(default_factory=dict)
    )
    labels: dict[LabelKey, str] = Field(default_factory=dict)
    restart: Literal["no", "always", "unless-stopped", "on-failure"] = "unless-stopped"
    health_path: Annotated[str, matching(r"/\S*", "write a path starting with /")] = "/health"

    @field_validator("command", "args")
    @classmethod
    def _words(cls, words: list[str]) -> list[str]:
        if any(not w or "\n" in w or "\x00" in w for w in words):
            raise ValueError("each word must be non-empty, on one line")
        return words

    @field_validator("env", mode="before")
    @classmethod
    def _numbers_are_text(cls, env: Any) -> Any:
        # `VLLM_PORT: 8000` in YAML is a number; the environment only holds text.
        if isinstance(env, dict):
            return {
                k: str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
                for k, v in env.items()
            }
        return env

    @field_validator("env")
    @classmethod
    def _no_plain_secret(cls, env: dict[str, str | SecretValue]) -> dict[str, str | SecretValue]:
        for name, value in env.items():
            if isinstance(value, str) and value and SECRET_NAME.search(name):
                raise ValueError(
                    f"{name} looks like a secret but holds a plain value; name where it comes "
                    f"from instead: `{name}: {{value_env: VARIABLE}}` (an environment variable "
                    f"of the reliability host) or `{name}: {{value_file: PATH}}`"
                )
            if isinstance(value, str) and ("\n" in value or "\x00" in value):
                raise ValueError(f"{name}: the value must be on one line")
        return env

    def secrets(self) -> dict[str, SecretValue]:
        return {k: v for k, v in self.env.items() if isinstance(v, SecretValue)}

    def plain_env(self) -> dict[str, str]:
        return {k: v for k, v in self.env.items() if isinstance(v, str)}


def old_container_form(value: Any) -> Any:
    """`container: NAME` was a name before it became a spec: say how to write it now."""
    if isinstance(value, str):
        raise ValueError(
            f"`container` is now the container's spec; write `container: {{name: {value}}}` "
            "and add its args, env and volumes (see reliability.example.yaml)"
        )
    return value


def image_problem(image: str | None, spec: ContainerSpec, loc: Loc) -> tuple[Loc, str] | None:
    """The service's `image` where its policy wants a digest and it has none."""
    if image is None or spec.image_policy != "digest" or "@sha256:" in image:
        return None
    return loc, (
        f"{image!r} is not pinned by digest; write REF@sha256:… (docker pull REF prints the "
        "digest), or set container.image_policy: tag"
    )
