"""docker-compose.yml keeps what the README's Docker section promises (no Docker engine needed)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools import local_run
from services import preflight

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
README = (ROOT / "README.md").read_text()
DOCKER_SECTION = README.split("### Docker", 1)[1].split("\n## ", 1)[0]


def table(section: str, header: str) -> list[list[str]]:
    """The rows of the markdown table that starts with `header`, cells stripped."""
    lines = section.split(header, 1)[1].splitlines()[2:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


SERVICE_ROWS = table(DOCKER_SECTION, "| service | profile | runs | health check |")
VARIABLE_ROWS = table(DOCKER_SECTION, "| variable | meaning |")


def environment(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in SERVICES[service].get("environment", {}).items()}


def test_the_readme_names_every_service_and_only_those() -> None:
    assert {row[0].strip("`") for row in SERVICE_ROWS} == set(SERVICES)


@pytest.mark.parametrize("row", SERVICE_ROWS, ids=lambda row: row[0].strip("`"))
def test_each_service_has_the_profile_command_and_health_check_promised(row: list[str]) -> None:
    name, profile, runs, health = (cell.strip("`") for cell in row)
    service = SERVICES[name]
    assert service.get("profiles", []) == ([] if profile == "none" else [profile])
    command = re.search(r"`(python -m [^`]+)`", row[2])
    if command:
        assert " ".join(service["command"][:4]).startswith(command.group(1).split(" (")[0])
    port = re.fullmatch(r"/healthz on (\d+)", health)
    if port:
        assert "test" in service["healthcheck"]
        assert environment(name)["HEALTHZ"] == f"http://127.0.0.1:{port.group(1)}/healthz"
        assert f"{port.group(1)}:{port.group(1)}" in service["ports"]
    elif health.startswith("broker"):
        assert "kafka-broker-api-versions" in " ".join(service["healthcheck"]["test"])
    for volume in re.findall(r"`([a-z-]+-data)` volume", runs):
        assert volume in COMPOSE["volumes"]
        assert any(str(v).startswith(f"{volume}:") for v in service["volumes"])


@pytest.mark.parametrize("row", VARIABLE_ROWS, ids=lambda row: row[0].strip("`"))
def test_each_variable_the_readme_lists_reaches_the_gateway(row: list[str]) -> None:
    variable = row[0].strip("`")
    text = (ROOT / "docker-compose.yml").read_text()
    assert "${" + variable in text
    if "(required)" in row[1] and variable != "WINDOWGATE_PAGES_FILE":
        for name in ("config-check", "ingest", "window", "dispatcher"):
            assert variable in environment(name), (name, variable)


def test_missing_secrets_fail_once_in_config_check_before_any_service() -> None:
    check = SERVICES["config-check"]
    assert check["command"] == ["python", "-m", "services.preflight"]
    assert check.get("restart", "no") == "no"
    for name in ("ingest", "window", "dispatcher"):
        depends = SERVICES[name]["depends_on"]
        assert depends["config-check"] == {"condition": "service_completed_successfully"}
        assert depends["kafka"] == {"condition": "service_healthy"}
    # Empty secrets are exactly what preflight reports, one line each, naming the variables.
    found = preflight.problems({k: "" for k in environment("config-check")})
    assert any("META_APP_SECRET" in line and "META_VERIFY_TOKEN" in line for line in found)
    assert any(line.startswith("WINDOWGATE_API_TOKENS is not set") for line in found)


def test_the_pages_file_is_mounted_read_only_where_the_services_look() -> None:
    for name in ("config-check", "ingest", "window", "dispatcher"):
        [mount] = [v for v in SERVICES[name]["volumes"] if isinstance(v, dict)]
        assert mount["type"] == "bind"
        assert mount["source"] == "${WINDOWGATE_PAGES_FILE:-./pages.json}"
        assert mount["read_only"] is True
        assert mount["bind"]["create_host_path"] is False
        assert environment(name)["WINDOWGATE_PAGES"] == mount["target"]


def test_the_demo_is_make_run_with_the_graph_standin_in_the_image() -> None:
    demo = SERVICES["demo"]
    assert demo["command"][:3] == ["python", "-m", "devtools.local_run"]
    assert environment("demo")["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert demo["depends_on"]["kafka"] == {"condition": "service_healthy"}
    assert "--host" in demo["command"]
    for port in (8080, 8081, 8082):
        assert f"{port}:{port}" in demo["ports"]
    # The stand-in is named once, by module path, in local_run; the image must carry its package.
    package = local_run.GRAPH_STANDIN_MODULE.split(".")[0]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"^COPY {package} \./{package}$", dockerfile, re.MULTILINE)
    assert demo["working_dir"] == "/src"
    assert "WORKDIR /src" in dockerfile
    assert "devtools.local_run" in README and "--profile demo up" in README
