"""Rewrite the shipped Prometheus configuration for a concrete set of targets.

`deploy/prometheus/prometheus.yml` is written for a real deployment (file service discovery for
agents); a test or a one-off setup needs the same jobs pointed at loopback ports with short
intervals. Keeping job names and metric paths from the shipped file means the shipped alerting
rules apply unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from gpucap.core.errors import InputError

AGENT_JOB = "gpucap-agent"
LEDGER_JOB = "gpucap-ledger"


def _seconds(value: float) -> str:
    """A Prometheus duration in whole milliseconds (Prometheus rejects fractional units)."""
    millis = round(value * 1000)
    if millis <= 0:
        raise InputError("scrape_interval_seconds", f"expected a positive duration, got {value}")
    return f"{millis}ms"


def render_prometheus_config(
    template_text: str,
    *,
    agent_targets: Sequence[str],
    ledger_targets: Sequence[str],
    rule_files: Sequence[str],
    scrape_interval_seconds: float = 30.0,
    ledger_token_file: str | None = None,
) -> str:
    """The shipped configuration with static targets, given rule files and one interval; the
    ledger is scraped with the token in `ledger_token_file` (None: without one).

    The scrape timeout equals the interval and rules are evaluated at the same pace. Raises
    `InputError` naming the field when the template lacks a gpucap job.
    """
    try:
        config: Any = yaml.safe_load(template_text)
    except yaml.YAMLError as exc:
        raise InputError("prometheus.yml", f"not valid YAML: {exc}") from None
    if not isinstance(config, dict) or not isinstance(config.get("scrape_configs"), list):
        raise InputError("prometheus.yml.scrape_configs", "expected a list of scrape jobs")
    interval = _seconds(scrape_interval_seconds)
    config["global"] = {
        **(config.get("global") or {}),
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "evaluation_interval": interval,
    }
    config["rule_files"] = list(rule_files)
    targets = {AGENT_JOB: list(agent_targets), LEDGER_JOB: list(ledger_targets)}
    seen: set[str] = set()
    for index, job in enumerate(config["scrape_configs"]):
        name = job.get("job_name") if isinstance(job, dict) else None
        if name not in targets:
            continue
        seen.add(name)
        for key in [k for k in job if k.endswith("_sd_configs") or k == "static_configs"]:
            del job[key]
        job["static_configs"] = [{"targets": targets[name]}]
        if name == LEDGER_JOB:
            if ledger_token_file is None:
                job.pop("authorization", None)  # a ledger run without GPUCAP_METRICS_TOKEN
            else:
                job["authorization"] = {"type": "Bearer", "credentials_file": ledger_token_file}
        config["scrape_configs"][index] = job
    missing = sorted(set(targets) - seen)
    if missing:
        raise InputError("prometheus.yml.scrape_configs", f"no job named {missing[0]!r}")
    return yaml.safe_dump(config, sort_keys=False)
