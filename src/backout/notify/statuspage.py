"""The Statuspage REST API v1: an incident while customers are affected, and a component's status.

See https://developer.statuspage.io (auth: `Authorization: OAuth <api key>`)."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import quote

import httpx

from backout.config import StatuspageSettings
from backout.notify.http import deliver, post_json
from backout.notify.message import Delivery

__all__ = ["ComponentStatus", "IncidentStatus", "Statuspage", "statuspage_label"]

IncidentStatus = Literal["investigating", "identified", "monitoring", "resolved"]
ComponentStatus = Literal["operational", "degraded_performance", "partial_outage", "major_outage",
                          "under_maintenance"]


def statuspage_label(settings: StatuspageSettings) -> str:
    """How the page is named in plans and deliveries, e.g. "statuspage 'kctbh9vrtdwd'"."""
    return f"statuspage {settings.page_id!r}"


class Statuspage:
    """One page's incidents and component, through `client`; no method raises."""

    def __init__(self, settings: StatuspageSettings, client: httpx.Client, retries: int = 3) -> None:
        self.settings, self.client, self.retries = settings, client, retries
        self.label = statuspage_label(settings)

    def open_incident(self, name: str, body: str,
                      component_status: ComponentStatus = "major_outage") -> tuple[Delivery, str | None]:
        """Open an incident (status "identified") marking the component; the Delivery and its id."""
        incident = {"name": name, "status": "identified", "body": body,
                    **self._components(component_status)}
        delivery, response = self._send("POST", "incidents", {"incident": incident}, "incident opened")
        if not delivery.ok:
            return delivery, None
        incident_id = _incident_id(response)
        if incident_id is None:
            delivery.ok = False
            delivery.detail = f"{self.label}: the answer to opening an incident had no incident id"
            return delivery, None
        delivery.detail = delivery.detail.replace("incident opened", f"incident {incident_id} opened")
        return delivery, incident_id

    def update_incident(self, incident_id: str, body: str, status: IncidentStatus = "monitoring",
                        component_status: ComponentStatus | None = None) -> Delivery:
        """Post an update to an incident (and set the component's status when given)."""
        incident: dict[str, Any] = {"status": status, "body": body}
        if component_status is not None:
            incident.update(self._components(component_status))
        path = f"incidents/{quote(incident_id, safe='')}"
        return self._send("PATCH", path, {"incident": incident}, f"incident {incident_id} {status}")[0]

    def resolve_incident(self, incident_id: str, body: str) -> Delivery:
        """Resolve an incident and set the component back to operational."""
        return self.update_incident(incident_id, body, "resolved", "operational")

    def set_component(self, status: ComponentStatus) -> Delivery:
        """Set the configured component's status."""
        if self.settings.component_id is None:
            return Delivery(self.label, False, f"{self.label}: no component_id in the statuspage "
                            "settings; add one to set a component's status", 0, 0.0)
        path = f"components/{quote(self.settings.component_id, safe='')}"
        return self._send("PATCH", path, {"component": {"status": status}}, f"component {status}")[0]

    def _components(self, status: ComponentStatus) -> dict[str, Any]:
        component = self.settings.component_id
        return {} if component is None else {"component_ids": [component],
                                             "components": {component: status}}

    def _send(self, method: str, path: str, json: dict[str, Any],
              done: str) -> tuple[Delivery, httpx.Response | None]:
        url = f"{self.settings.api_base.rstrip('/')}/pages/{quote(self.settings.page_id, safe='')}/{path}"
        return deliver(self.label, lambda: post_json(
            self.client, method, url, json, {"Authorization": f"OAuth {self.settings.api_key.value()}"},
            self.retries), done)


def _incident_id(response: httpx.Response | None) -> str | None:
    try:
        body = response.json() if response is not None else None
    except ValueError:
        return None
    value = body.get("id") if isinstance(body, dict) else None
    return value if isinstance(value, str) and value else None
