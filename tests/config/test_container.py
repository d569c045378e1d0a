"""`services[].container`: the spec every deploy starts, and what `config check` says about
a spec that would leak a secret, reach a shell, or run an image it cannot roll back to."""

from __future__ import annotations

import textwrap
from pathlib import Path

from click.testing import CliRunner, Result

from reliability.cli import main
from reliability.cli_support import load_config

HEAD = """\
nodes:
  - {name: gpu-1, address: 10.0.0.1, pool: blue}
services:
  - name: chat
    pools: [blue]
    active_pool: blue
"""


def check(tmp_path: Path, service: str) -> tuple[Result, Path]:
    path = tmp_path / "reliability.yaml"
    path.write_text(HEAD + textwrap.indent(textwrap.dedent(service), "    "))
    result = CliRunner().invoke(main, ["config", "check", "--skip-secrets", "-c", str(path)])
    return result, path


def test_a_full_spec_loads_with_its_secret_named_not_written(tmp_path, monkeypatch):
    result, path = check(
        tmp_path,
        """\
        image: registry.example.com/vllm@sha256:"""
        + "a" * 64
        + """
        container:
          name: vllm
          args: [--model, org/model]
          env: {HF_HOME: /models, VLLM_PORT: 8000, HF_TOKEN: {value_file: hf.token}}
          volumes: [/data/models:/models:ro, cache:/root/.cache]
          ipc: host
          shm_size: 16g
          ulimits: {memlock: -1}
        """,
    )
    assert result.exit_code == 0, result.output
    (tmp_path / "hf.token").write_text("hf_from-file\n")
    config = load_config(path)
    (chat,) = config.services
    assert chat.container_name == "vllm" and chat.health_path == "/health"
    assert chat.container.plain_env() == {"HF_HOME": "/models", "VLLM_PORT": "8000"}
    assert config.container_secrets(chat) == {"HF_TOKEN": "hf_from-file"}
    assert "hf_from-file" in config.secret_values()  # so every record redacts it
    (tmp_path / "hf.token").unlink()
    assert config.secret_issues() == [
        f"{path}:11: services[0].container.env.HF_TOKEN: cannot read secret file "
        f"{tmp_path / 'hf.token'}: No such file or directory"
    ]


def test_the_old_name_form_is_refused_with_the_new_form(tmp_path):
    result, path = check(tmp_path, "container: vllm\n")
    assert result.exit_code == 2
    assert (
        f"{path}:7: services[0].container: `container` is now the container's spec; write "
        "`container: {name: vllm}`"
    ) in result.output


def test_a_secret_written_as_a_plain_value_is_refused_with_where_to_put_it(tmp_path):
    result, path = check(tmp_path, "container:\n  env: {HF_TOKEN: hf_abcdef}\n")
    assert result.exit_code == 2
    assert f"{path}:8: services[0].container.env: HF_TOKEN looks like a secret" in result.output
    assert "`HF_TOKEN: {value_env: VARIABLE}`" in result.output
    assert "hf_abcdef" not in result.output.replace("input_value", "")


def test_a_volume_path_with_shell_characters_is_refused(tmp_path):
    result, path = check(tmp_path, "container:\n  volumes: ['/data/$(reboot):/models']\n")
    assert result.exit_code == 2
    assert f"{path}:8: services[0].container.volumes[0]: '/data/$(reboot):/models'" in (
        result.output
    )
    assert "no spaces, quotes or shell characters" in result.output


def test_an_image_without_a_digest_is_refused_where_the_policy_wants_one(tmp_path):
    result, path = check(tmp_path, "image: vllm/vllm-openai:latest\n")
    assert result.exit_code == 2
    assert (
        f"{path}:7: services[0].image: 'vllm/vllm-openai:latest' is not pinned by digest; "
        "write REF@sha256:…"
    ) in result.output
    assert "or set container.image_policy: tag" in result.output
    tagged, _ = check(tmp_path, "image: vllm/vllm-openai:latest\ncontainer: {image_policy: tag}\n")
    assert tagged.exit_code == 0, tagged.output


def test_health_path_moved_into_the_container(tmp_path):
    result, path = check(tmp_path, "health_path: /ready\n")
    assert result.exit_code == 2
    assert f"{path}:4: services[0]: `health_path` belongs to the container now" in result.output
    assert "write it as `container: {health_path: ...}`" in result.output
