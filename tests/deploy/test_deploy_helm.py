"""The Helm chart: YAML-level checks always, `helm lint` and `helm template` where helm exists."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import unavailable
from tests.deploy.deploy_testkit import DEPLOY, run

CHART = DEPLOY / "helm" / "gpucap"
TEMPLATES = sorted((CHART / "templates").iterdir())
CI_VALUES = CHART / "ci" / "test-values.yaml"
_VALUES_REF = re.compile(r"\.Values\.([A-Za-z0-9_.]+)")
_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.DOTALL)
_OPENERS = ("if ", "range ", "with ", "define ", "block ")


def _values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return loaded


def _schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return loaded


def _helm() -> str:
    """helm: skip without it locally, fail under CI=true (.ci/run installs it)."""
    path = shutil.which("helm")
    if path is None:
        unavailable("helm not installed (.ci/run installs it from npm)")
    return path


@pytest.mark.parametrize(
    ("copy", "source"),
    [
        ("files/alerts.yml", DEPLOY / "prometheus" / "alerts.yml"),
        ("files/gpucap.json", DEPLOY / "grafana" / "gpucap.json"),
    ],
)
def test_chart_files_are_identical_to_the_shipped_artefacts(copy: str, source: Path) -> None:
    assert (CHART / copy).read_bytes() == source.read_bytes(), f"copy {source} to {copy}"


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "gpucap"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert chart["appVersion"]


def test_default_and_ci_values_validate_against_the_schema() -> None:
    jsonschema.Draft7Validator.check_schema(_schema())
    jsonschema.validate(_values(), _schema())
    merged = _values()
    merged["agent"].update(yaml.safe_load(CI_VALUES.read_text())["agent"])
    jsonschema.validate(merged, _schema())


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("agent", "metricsPort"), 70000),
        (("agent", "spool", "type"), "nfs"),
        (("agent", "logLevel"), "verbose"),
        (("agent", "ledgerUrl"), "ledger:8470"),
        (("ledger", "database", "url"), "mysql://x"),
        (("ledger", "persistence", "size"), "lots"),
        (("serviceMonitor", "interval"), "30"),
        (("agent", "unknownKey"), True),
    ],
)
def test_the_schema_refuses_bad_values(path: tuple[str, ...], value: object) -> None:
    values = _values()
    node = values
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(values, _schema())


def _has_path(values: dict[str, Any], dotted: str) -> bool:
    node: Any = values
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda path: path.name)
def test_templates_reference_only_values_that_exist(template: Path) -> None:
    refs = set(_VALUES_REF.findall(template.read_text()))
    missing = sorted(ref for ref in refs if not _has_path(_values(), ref))
    assert missing == []


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda path: path.name)
def test_template_actions_are_balanced(template: Path) -> None:
    text = template.read_text()
    assert text.count("{{") == text.count("}}")
    depth = 0
    for action in _ACTION.findall(text):
        if action.startswith("/*"):
            continue
        if action.startswith(_OPENERS):
            depth += 1
        elif action == "end":
            depth -= 1
            assert depth >= 0, f"{template.name}: 'end' without a block"
    assert depth == 0, f"{template.name}: {depth} unclosed block(s)"


def test_every_value_is_used_by_a_template() -> None:
    used = set()
    for template in TEMPLATES:
        used |= set(_VALUES_REF.findall(template.read_text()))
    # Components are enabled through `(index $.Values $component).enabled` as well.
    used |= {"agent.enabled", "ledger.enabled"}

    def leaves(node: Any, prefix: str) -> list[str]:
        if isinstance(node, dict) and node and prefix.count(".") < 2:
            return [leaf for k, v in node.items() for leaf in leaves(v, f"{prefix}{k}.")]
        return [prefix.rstrip(".")]

    unused = [
        leaf
        for leaf in leaves(_values(), "")
        if not any(ref == leaf or ref.startswith(leaf + ".") or leaf.startswith(ref + ".")
                   for ref in used)
    ]  # fmt: skip
    assert unused == []


def test_helm_lint() -> None:
    result = run(_helm(), "lint", "--strict", str(CHART), "-f", str(CI_VALUES))
    assert result.returncode == 0, result.stdout + result.stderr


def _render(*args: str) -> list[dict[str, Any]]:
    result = run(_helm(), "template", "gpucap", str(CHART), "--namespace", "gpu", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_helm_template_renders_every_object() -> None:
    docs = _render("-f", str(CI_VALUES), "--api-versions", "monitoring.coreos.com/v1")
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds == sorted(
        [
            "ConfigMap",
            "DaemonSet",
            "Deployment",
            "PersistentVolumeClaim",
            "PrometheusRule",
            "Service",
            "Service",
            "ServiceMonitor",
            "ServiceMonitor",
        ]
    )
    by_kind = {doc["kind"]: doc for doc in docs}
    rules = by_kind["PrometheusRule"]["spec"]["groups"]
    assert rules == yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    pod = by_kind["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    dashboard = json.loads(by_kind["ConfigMap"]["data"]["gpucap.json"])
    assert dashboard["uid"] == "gpucap-fleet"
    for monitor in (doc for doc in docs if doc["kind"] == "ServiceMonitor"):
        assert monitor["spec"]["jobLabel"] == "gpucap.io/job"
    # The ledger's fleet-wide metrics: the pod reads the token from the Secret, mounted as a
    # file, the ledger's ServiceMonitor sends it, the agents' (node-local metrics) does not.
    ledger = by_kind["Deployment"]["spec"]["template"]["spec"]
    assert _secret_file(ledger, "GPUCAP_METRICS_TOKEN_FILE") == ("gpucap-metrics-token", "token")
    monitors = {
        doc["metadata"]["labels"]["app.kubernetes.io/component"]: doc["spec"]["endpoints"][0]
        for doc in docs
        if doc["kind"] == "ServiceMonitor"
    }
    assert monitors["ledger"]["authorization"]["credentials"]["name"] == "gpucap-metrics-token"
    assert "authorization" not in monitors["agent"]


def _secret_file(pod: dict[str, Any], variable: str) -> tuple[str, str | None]:
    """(Secret, key) of the file that `variable` names in the pod's first container: found
    through its volume mount; the key is None for a whole-Secret volume (one file per key)."""
    container = pod["containers"][0]
    path = next(e["value"] for e in container["env"] if e["name"] == variable)
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    assert mount.get("readOnly") is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])["secret"]
    name = path.removeprefix(mount["mountPath"] + "/")
    if "items" not in volume:
        return volume["secretName"], None
    keys = [item["key"] for item in volume["items"] if item["path"] == name]
    assert len(keys) == 1, f"{variable}: {name} is not an item of {volume['secretName']}"
    return volume["secretName"], keys[0]


def _secret_leaks(docs: list[dict[str, Any]]) -> list[str]:
    """Containers that would carry a token in their arguments or environment: a token-like
    argument, a secret's variable set directly, or any variable but the database URL read from a
    Secret (an environment is visible to whatever the process starts and in its /proc)."""
    found = []
    for doc in docs:
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("initContainers", []) + spec.get("containers", []):
            where = f"{doc['kind']} {container['name']}"
            args = " ".join(container.get("args", []) + container.get("command", []))
            if re.search(r"token|secret|bearer", args, re.IGNORECASE):
                found.append(f"{where}: args {args}")
            for env in container.get("env", []):
                if env["name"] in ("GPUCAP_TOKEN", "GPUCAP_METRICS_TOKEN", "GPUCAP_LEDGER_SECRET"):
                    found.append(f"{where}: {env['name']}")
                elif "secretKeyRef" in env.get("valueFrom", {}) and env["name"] != "GPUCAP_DB":
                    found.append(f"{where}: {env['name']} from a Secret")
    return found


def test_tokens_reach_the_pods_as_files_only() -> None:
    docs = _render(
        "-f", str(CI_VALUES), "--set", "ledger.signingSecret.existingSecret=gpucap-signing"
    )
    assert _secret_leaks(docs) == []
    by_kind = {doc["kind"]: doc for doc in docs}
    agent = by_kind["DaemonSet"]["spec"]["template"]["spec"]
    # Each node reads its own file of the tokens Secret (one key per node name).
    env = {e["name"]: e for e in agent["containers"][0]["env"]}
    assert env["GPUCAP_TOKEN_FILE"]["value"] == "/etc/gpucap/node-tokens/$(NODE_NAME)"
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert "GPUCAP_CONFIG" not in env
    assert _secret_file(agent, "GPUCAP_TOKEN_FILE") == ("gpucap-node-tokens", None)
    ledger = by_kind["Deployment"]["spec"]["template"]["spec"]
    assert _secret_file(ledger, "GPUCAP_LEDGER_SECRET_FILE") == ("gpucap-signing", "secret")
    assert _secret_file(ledger, "GPUCAP_METRICS_TOKEN_FILE") == ("gpucap-metrics-token", "token")
    # The migrate init container reads the same files (it signs with the same secret).
    migrate = {e["name"] for e in ledger["initContainers"][0]["env"]}
    assert {"GPUCAP_LEDGER_SECRET_FILE", "GPUCAP_METRICS_TOKEN_FILE"} <= migrate


def test_the_leak_check_notices_a_token_in_the_environment_or_the_args() -> None:
    docs = _render("-f", str(CI_VALUES))
    agent = next(d for d in docs if d["kind"] == "DaemonSet")
    container = agent["spec"]["template"]["spec"]["containers"][0]
    container["env"].append(
        {"name": "GPUCAP_API", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
    )
    container["args"].extend(["--token", "gpc1.x.y"])
    assert len(_secret_leaks([agent])) == 2


def test_helm_template_without_the_operator_api_skips_its_objects() -> None:
    kinds = {doc["kind"] for doc in _render("-f", str(CI_VALUES))}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}


def test_helm_template_refuses_to_render_without_a_site() -> None:
    result = run(_helm(), "template", "gpucap", str(CHART))
    assert result.returncode != 0
    assert "agent.site is required" in result.stderr


def test_every_rendered_manifest_is_valid_kubernetes() -> None:
    """Each core object the chart renders validates against the Kubernetes API schemas
    (kubernetes-validate, strict: no unknown fields); the Prometheus operator's kinds are CRDs
    the schemas do not hold, and are checked by the tests above."""
    import kubernetes_validate

    docs = _render("-f", str(CI_VALUES), "--api-versions", "monitoring.coreos.com/v1")
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        try:
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {exc.message}")
        checked += 1
    assert checked == 6  # the ConfigMap, DaemonSet, Deployment, PVC and two Services
