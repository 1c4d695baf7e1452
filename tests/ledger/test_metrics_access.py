"""Who may scrape the ledger's fleet-wide metrics: a bearer token, and a listener of their own."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from gpucap.core.errors import InputError
from gpucap.ledger.settings import Settings
from tests.ledger.support import REGISTRY, free_port, ledger_server

pytestmark = pytest.mark.slow
TOKEN = "metrics-0123456789abcdef"


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY, encoding="utf-8")
    return path


def _scrape(url: str, token: str | None) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.get(f"{url}/metrics", headers=headers, timeout=10)


def test_a_scrape_without_the_token_is_refused(db_url: str, registry: Path) -> None:
    with ledger_server(db_url, registry, {"GPUCAP_METRICS_TOKEN": TOKEN}) as url:
        refused = _scrape(url, None)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        assert _scrape(url, "metrics-wrong-0123456789").status_code == 401
        ok = _scrape(url, TOKEN)
        assert ok.status_code == 200
        assert 'gpucap_auth_refusals_total{reason="metrics_token"} 2.0' in ok.text
        assert "gpucap_site_tpp" in ok.text


@pytest.mark.parametrize("workers", ["1", "2"])
def test_metrics_on_their_own_listener_only(db_url: str, registry: Path, workers: str) -> None:
    port = free_port()
    env = {
        "GPUCAP_METRICS_TOKEN": TOKEN,
        "GPUCAP_LEDGER_METRICS_PORT": str(port),
        "GPUCAP_LEDGER_WORKERS": workers,
    }
    with ledger_server(db_url, registry, env) as url:
        assert _scrape(url, TOKEN).status_code == 404  # not on the API's port
        metrics = f"http://127.0.0.1:{port}"
        assert _scrape(metrics, None).status_code == 401
        answer = _scrape(metrics, TOKEN)
        assert answer.status_code == 200
        assert "gpucap_ruleset_info" in answer.text
        assert httpx.get(f"{metrics}/healthz", timeout=10).status_code == 404  # metrics only


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"metrics_port": 70000}, "--metrics-port"),
        ({"metrics_port": 8470}, "--metrics-port"),
        ({"metrics_token": "short"}, "GPUCAP_METRICS_TOKEN"),
    ],
)
def test_bad_metrics_settings_are_refused(values: dict[str, object], field: str) -> None:
    with pytest.raises(InputError) as info:
        Settings.from_env({}, **values)
    assert info.value.path == field
