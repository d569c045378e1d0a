"""Dashboards as code: the five dashboards, deterministic builds, queries only of catalogued
metrics (the daemon's, or the serving engines' own), settings from the config, and the push
to Grafana's HTTP API (a stand-in on loopback) with its failures reported per dashboard."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from reliability import catalog
from reliability.cli import main
from reliability.config import DashboardsConfig
from reliability.dashboards import links
from reliability.dashboards.build import (
    build_all,
    engine_series,
    exported_series,
    known_series,
    metric_names,
    queries,
)
from reliability.testing.grafana import GrafanaStandIn
from reliability.testing.loopback import free_port

SOURCES = Path(__file__).resolve().parents[2] / "dashboards"
TOKEN_ENV = "RELIABILITY_TEST_GRAFANA_TOKEN"
BUILT = build_all(SOURCES)
UIDS = sorted(b.uid for b in BUILT)


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def all_queries() -> list[tuple[str, str]]:
    return [(f"{b.title}: {where}", expr) for b in BUILT for where, expr in queries(b.model)]


# --- build ---------------------------------------------------------------------------------


def test_the_five_dashboards_are_built_with_the_uids_messages_link_to():
    assert {b.title: b.uid for b in BUILT} == {
        "GPU fleet": links.GPU_FLEET,
        "API health": links.API_HEALTH,
        "Incidents and runbooks": links.INCIDENTS_RUNBOOKS,
        "Serving engines": links.SERVING_ENGINES,
        "Capacity and cost": links.CAPACITY_COST,
    }
    assert sorted(links.ALL) == UIDS


def test_an_incident_link_cannot_break_out_of_its_slack_link():
    """Label values are URL-encoded: `|` or `>` in one cannot end the link `<url|text>`."""
    url = links.incident_url(
        "https://grafana.example/",
        labels={"node": "gpu 1|<!channel>", "endpoint": "ignored: the node wins"},
        started_at=datetime(2026, 1, 1, 12, 0, tzinfo=UTC),
    )
    assert url == (
        "https://grafana.example/d/reliability-gpu-fleet?var-node=gpu+1%7C%3C%21channel%3E"
        "&from=1767267000000&to=now"
    )


def test_build_twice_gives_byte_identical_files(tmp_path: Path):
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        result = run("dashboards", "build", "--src", str(SOURCES), "--out", str(out))
        assert result.exit_code == 0, result.output
    names = sorted(p.name for p in first.iterdir())
    assert names == [f"{uid}.json" for uid in UIDS]
    assert len(names) == 5
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


@pytest.mark.parametrize(("where", "expr"), all_queries(), ids=[w for w, _ in all_queries()])
def test_every_query_selects_only_catalogue_metrics(where: str, expr: str):
    names = metric_names(expr)
    assert names, f"{where}: no metric in {expr!r}"
    assert names <= known_series(), f"{where}: {sorted(names - known_series())} in {expr!r}"


def test_only_the_serving_engines_dashboards_query_engine_metrics():
    """The daemon never exports an engine's metric; only dashboards for the engines'
    own /metrics may name one."""
    assert not exported_series() & engine_series()
    assert not {m.name for m in catalog.ALL} & set(catalog.ENGINE_BY_NAME)
    engines_queried = {
        b.uid for b in BUILT for _, expr in queries(b.model) if metric_names(expr) & engine_series()
    }
    assert engines_queried == {links.SERVING_ENGINES, links.CAPACITY_COST}


def test_every_engine_has_a_query_for_each_concern_it_reports():
    model = next(b.model for b in BUILT if b.uid == links.SERVING_ENGINES)
    by_panel = {
        p["title"]: {
            catalog.ENGINE_BY_NAME[n.removesuffix("_bucket")].engine
            for t in p["targets"]
            for n in metric_names(t["expr"])
        }
        for p in model["panels"]
        if p["type"] != "row"
    }
    every = set(catalog.ENGINES)
    assert by_panel == {
        "Queue depth": every,
        "Running requests": every,
        # TGI has no KV-cache usage nor time-to-first-token metric.
        "KV-cache usage per server": every - {"tgi"},
        "Time to first token": every - {"tgi"},
        "End-to-end latency": every,
        "Requests finished": every,
    }


def test_the_energy_price_comes_from_the_config(tmp_path: Path):
    config = tmp_path / "reliability.yaml"
    config.write_text("dashboards:\n  energy_price_per_kwh: 0.31\n")
    out = tmp_path / "out"
    result = run("dashboards", "build", "--src", str(SOURCES), "--out", str(out), "-c", str(config))
    assert result.exit_code == 0, result.output
    model = json.loads((out / f"{links.CAPACITY_COST}.json").read_text())
    [price] = [v for v in model["templating"]["list"] if v["name"] == "price_per_kwh"]
    assert (price["type"], price["query"], price["current"]["value"]) == ("textbox", "0.31", "0.31")
    default = next(b.model for b in BUILT if b.uid == links.CAPACITY_COST)
    [price] = [v for v in default["templating"]["list"] if v["name"] == "price_per_kwh"]
    assert price["query"] == str(DashboardsConfig().energy_price_per_kwh)
    costs = [
        t["expr"] for p in model["panels"] if "cost" in p["title"].lower() for t in p["targets"]
    ]
    assert costs and all("$price_per_kwh" in expr for expr in costs)


@pytest.mark.parametrize("built", BUILT, ids=UIDS)
def test_dashboards_are_portable_and_stable(built):
    model = built.model
    assert model["uid"].startswith("reliability-") and model["id"] is None
    assert model["schemaVersion"] >= 39
    variables = [v["name"] for v in model["templating"]["list"]]
    assert variables[0] == "datasource"
    panels = [p for p in model["panels"] if p["type"] != "row"]
    assert [p["id"] for p in model["panels"]] == list(range(1, len(model["panels"]) + 1))
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert all(t["datasource"] == panel["datasource"] for t in panel["targets"])


def test_panel_thresholds_come_from_the_builtin_rules():
    from reliability.detect import builtin

    model = next(b.model for b in BUILT if b.uid == "reliability-gpu-fleet")
    panel = next(p for p in model["panels"] if p["title"] == "GPU utilisation")
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1]["value"] == builtin.GPU_UTILIZATION_HIGH.value


def test_metric_names_ignores_functions_labels_and_variables():
    expr = (
        'histogram_quantile(0.99, sum by (endpoint, le) (rate(reliability_x_bucket{endpoint=~"$e"}'
        "[$__rate_interval]))) > 0 and on (node) reliability_y offset 5m"
    )
    assert metric_names(expr) == {"reliability_x_bucket", "reliability_y"}


def write_source(directory: Path, name: str, text: str) -> None:
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(text)


def test_a_query_of_an_unknown_metric_fails_naming_dashboard_panel_and_expr(tmp_path: Path):
    write_source(
        tmp_path / "src",
        "typo.dashboard.py",
        "from reliability.dashboards.panels import Query, new_dashboard, timeseries\n"
        "dashboard = new_dashboard(uid='t', title='Typo', description='', variables=[],\n"
        "    sections=[('Row', [timeseries('Heat', Query('reliabilty_gpu_temp'), unit='s')])])\n",
    )
    result = run("dashboards", "build", "--src", str(tmp_path / "src"), "--out", str(tmp_path))
    assert result.exit_code == 1
    assert "typo.dashboard.py: Typo: panel 'Heat'" in result.output
    assert "reliabilty_gpu_temp" in result.output
    assert not list(tmp_path.glob("*.json"))


def test_a_dashboard_file_that_fails_to_import_names_the_file_and_error(tmp_path: Path):
    write_source(tmp_path / "src", "broken.dashboard.py", "dashboard = undefined_name\n")
    result = run("dashboards", "build", "--src", str(tmp_path / "src"), "--out", str(tmp_path))
    assert result.exit_code == 1
    assert "broken.dashboard.py: NameError: name 'undefined_name' is not defined" in result.output


# --- push ----------------------------------------------------------------------------------


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "reliability.yaml"
    path.write_text(f"dashboards:\n  token_env: {TOKEN_ENV}\n  folder_uid: reliability\n")
    return path


def push(config_file: Path, url: str) -> Result:
    return run("dashboards", "push", "--src", str(SOURCES), "--url", url, "-c", str(config_file))


def test_push_uploads_every_dashboard_and_overwrites(config_file, monkeypatch):
    with GrafanaStandIn() as grafana:
        monkeypatch.setenv(TOKEN_ENV, grafana.token)
        first, second = push(config_file, grafana.url), push(config_file, grafana.url)
    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    lines = second.output.splitlines()
    assert [line.split(":")[0] for line in lines] == UIDS
    assert all(": pushed: version 2 at http://127.0.0.1:" in line for line in lines)
    assert sorted(grafana.dashboards) == UIDS
    assert all(r["overwrite"] and r["folderUid"] == "reliability" for r in grafana.requests)


def test_push_with_a_rejected_token_fails_every_dashboard(config_file, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "glsa_wrong")
    with GrafanaStandIn() as grafana:
        result = push(config_file, grafana.url)
    assert result.exit_code == 1
    failed = [line for line in result.output.splitlines() if "FAILED" in line]
    assert failed == [f"{uid}: FAILED: HTTP 401: Unauthorized" for uid in UIDS]
    assert ": pushed:" not in result.output
    assert f"{len(UIDS)} of {len(UIDS)} dashboards not pushed" in result.output


def test_push_to_an_unknown_folder_reports_grafanas_answer(config_file, monkeypatch):
    with GrafanaStandIn(folders=("elsewhere",)) as grafana:
        monkeypatch.setenv(TOKEN_ENV, grafana.token)
        result = push(config_file, grafana.url)
    assert result.exit_code == 1
    assert f"{UIDS[0]}: FAILED: HTTP 400: folder not found" in result.output


def test_push_to_an_unreachable_grafana_fails_every_dashboard(config_file, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "glsa_any")
    result = push(config_file, f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 1
    failed = [line for line in result.output.splitlines() if "FAILED: cannot reach" in line]
    assert len(failed) == len(UIDS)
    assert ": pushed:" not in result.output


def test_push_without_the_token_variable_is_bad_input(config_file, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    result = push(config_file, "http://127.0.0.1:1")
    assert result.exit_code == 2
    assert TOKEN_ENV in result.output


def test_stand_in_answers_version_mismatch_without_overwrite():
    import httpx

    body = {
        "dashboard": {"uid": "u", "title": "T", "panels": [], "schemaVersion": 39},
        "folderUid": "reliability",
    }
    with GrafanaStandIn() as grafana:
        headers = {"Authorization": f"Bearer {grafana.token}"}
        url = f"{grafana.url}/api/dashboards/db"
        assert httpx.post(url, json=body, headers=headers).json()["version"] == 1
        again = httpx.post(url, json=body, headers=headers)
    assert again.status_code == 412
    assert again.json()["status"] == "version-mismatch"


def test_the_sources_are_found_beside_the_config_from_any_folder(tmp_path: Path, monkeypatch):
    config = tmp_path / "etc" / "reliability.yaml"
    config.parent.mkdir()
    config.write_text(f"dashboards:\n  src: {SOURCES}\n")
    (tmp_path / "etc" / "local.yaml").write_text("dashboards:\n  src: panels\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no ./dashboards here

    built = run("dashboards", "build", "--out", str(tmp_path / "out"), "-c", str(config))
    missing = run("dashboards", "build", "-c", str(tmp_path / "etc" / "local.yaml"))

    assert built.exit_code == 0, built.output
    assert len(list((tmp_path / "out").glob("*.json"))) == len(BUILT)
    # A relative `src` is taken from the config file's folder, and says so when absent.
    assert missing.exit_code == 1
    assert str(tmp_path / "etc" / "panels") in missing.output
