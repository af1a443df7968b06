"""simrelay `notify` adapter: alerts a person when something needs a look.

Written in Python and built into a component with componentize-py against `wit/` (world
`plugin`), to show that an adapter need not be Rust. It consumes events and ticks, and its
only outputs are deliveries: alerts POSTed to a Telegram bot, to a generic JSON webhook, or
to both, by the host, durably and with retries.

It alerts when
- a SIM goes from online (registered, call connected) to any other state: once per
  transition, never again for a repeat of the same state;
- a gateway device has sent nothing for `silence_secs` (checked on tick): once per silence;
- an instance's deliveries have failed `failure_threshold` times in a row (the host's
  `delivery-health` events): once per failing streak, and once more when it recovers.

Every alert's idempotency key names the transition it reports, so a re-delivered event or
a repeated state can never produce a second alert: the host drops a key it has seen.

Keys in the instance's store (JSON values):
- `sim/<device>/<port or ICCID>`: {"online", "state", "number", "iccid", "offline_count"}
- `device/<device>`: {"last_seen_ms", "silence_alerted"}
- `health/<instance>`: {"alerted", "streak"}
"""

import json
from typing import Dict, List, Optional, Tuple

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import store
from wit_world.imports.types import (
    CallContext,
    Capability,
    Delivery,
    DeliveryOutcome,
    DeliveryOutcome_Response,
    DeliveryRef,
    Descriptor,
    Effects,
    Event,
    Event_DeliveryHealth,
    Event_MessageReceived,
    Event_SimStatusChanged,
    HttpReply,
    HttpRequest,
    OutgoingRequest,
    ResponseOutcome,
    SettingSpec,
    SimState,
    SimStatus,
    Verdict,
    Verdict_Delivered,
    Verdict_GiveUp,
    Verdict_Retry,
    Verdict_RetryAfterMs,
    WebhookOutcome,
)

VERSION = "0.1.0"
API_VERSION = "0.2.0"
TELEGRAM_API = "https://api.telegram.org"
DEFAULT_SILENCE_SECS = 900
DEFAULT_FAILURE_THRESHOLD = 4
ONLINE = (SimState.REGISTERED, SimState.CALL_CONNECTED)
# Suffixes of the idempotency keys, so `on_response` knows which destination answered.
TELEGRAM = "telegram"
WEBHOOK = "webhook"


class Settings:
    """The instance's settings, read and checked once per call."""

    def __init__(self, ctx: CallContext):
        values = dict(ctx.settings)
        self.token = values.get("telegram_bot_token", "")
        self.chat_id = values.get("telegram_chat_id", "")
        self.telegram_api = values.get("telegram_api_url", "").rstrip("/") or TELEGRAM_API
        self.webhook_url = values.get("webhook_url", "")
        self.silence_ms = number(values, "silence_secs", DEFAULT_SILENCE_SECS) * 1000
        self.failure_threshold = max(
            1, number(values, "failure_threshold", DEFAULT_FAILURE_THRESHOLD)
        )
        if bool(self.token) != bool(self.chat_id):
            raise Err("settings `telegram_bot_token` and `telegram_chat_id` go together")
        if not self.token and not self.webhook_url:
            raise Err(
                "no destination: set `telegram_bot_token` and `telegram_chat_id`, "
                "or `webhook_url`"
            )


def number(values: Dict[str, str], name: str, default: int) -> int:
    text = values.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit():
        # The error names the setting and its value; these are never secrets.
        raise Err(f"setting `{name}` must be a whole number, not `{text}`")
    return int(text)


class State:
    """JSON values in the instance's key-value store."""

    def __init__(self, ctx: CallContext):
        self.bucket = store.open(ctx.store)

    def get(self, key: str) -> Optional[dict]:
        value = self.bucket.get(key)
        return None if value is None else json.loads(value)

    def put(self, key: str, value: dict) -> None:
        self.bucket.set(key, json.dumps(value, sort_keys=True).encode())

    def keys(self, prefix: str) -> List[str]:
        keys: List[str] = []
        cursor = None
        while True:
            page = self.bucket.list_keys(cursor)
            keys.extend(key for key in page.keys if key.startswith(prefix))
            if page.cursor is None:
                return keys
            cursor = page.cursor


class Alert:
    """One thing to tell a person, with the key that makes it happen only once."""

    def __init__(self, key: str, kind: str, text: str, details: dict):
        self.key = key
        self.kind = kind
        self.text = text
        self.details = details

    def deliveries(self, settings: Settings) -> List[Delivery]:
        out = []
        if settings.token:
            url = f"{settings.telegram_api}/bot{settings.token}/sendMessage"
            body = {"chat_id": settings.chat_id, "text": self.text}
            out.append(post_json(f"{self.key}/{TELEGRAM}", url, body))
        if settings.webhook_url:
            body = {"alert": self.kind, "text": self.text, **self.details}
            out.append(post_json(f"{self.key}/{WEBHOOK}", settings.webhook_url, body))
        return out


def post_json(key: str, url: str, body: dict) -> Delivery:
    return Delivery(
        idempotency_key=key,
        request=OutgoingRequest(
            method="POST",
            url=url,
            headers=[("content-type", "application/json")],
            body=json.dumps(body, ensure_ascii=False).encode(),
            timeout_ms=None,
        ),
    )


def state_name(state: SimState) -> str:
    return state.name.lower().replace("_", "-")


def sim_key(sim: SimStatus) -> Optional[str]:
    """A SIM slot: the device and its port, or the SIM card when the port is unknown.

    The port comes first because a SIM that drops out of its slot is often reported with
    no ICCID at all."""
    slot = sim.port or sim.iccid or sim.number
    if slot is None:
        return None
    return f"sim/{sim.device or '-'}/{slot}"


def describe_sim(sim: SimStatus, known: dict) -> str:
    parts = []
    if sim.device:
        parts.append(f"gateway {sim.device}")
    if sim.port:
        parts.append(f"port {sim.port}")
    number = sim.number or known.get("number")
    if number:
        parts.append(f"number {number}")
    iccid = sim.iccid or known.get("iccid")
    if iccid:
        parts.append(f"ICCID {iccid}")
    return ", ".join(parts) or "a SIM"


def sim_changed(state: State, sim: SimStatus) -> List[Alert]:
    key = sim_key(sim)
    if key is None:
        return []
    known = state.get(key) or {"online": False, "offline_count": 0}
    online = sim.state in ONLINE
    alerts = []
    if known["online"] and not online:
        count = known["offline_count"] + 1
        known["offline_count"] = count
        detail = f" ({sim.detail})" if sim.detail else ""
        text = (
            f"SIM offline: {describe_sim(sim, known)} went from {known['state']} "
            f"to {state_name(sim.state)}{detail}"
        )
        details = {
            "device": sim.device,
            "port": sim.port,
            "number": sim.number or known.get("number"),
            "iccid": sim.iccid or known.get("iccid"),
            "state": state_name(sim.state),
        }
        alerts.append(Alert(f"sim-offline/{key[4:]}/{count}", "sim-offline", text, details))
    known.update(online=online, state=state_name(sim.state))
    # Remember who the SIM was while it was known, for the alert when it drops out.
    if sim.number:
        known["number"] = sim.number
    if sim.iccid:
        known["iccid"] = sim.iccid
    state.put(key, known)
    return alerts


def device_seen(state: State, device: Optional[str], now_ms: int) -> None:
    if device:
        state.put(f"device/{device}", {"last_seen_ms": now_ms, "silence_alerted": False})


def silent_devices(state: State, settings: Settings, now_ms: int) -> List[Alert]:
    if settings.silence_ms == 0:
        return []
    alerts = []
    for key in sorted(state.keys("device/")):
        seen = state.get(key)
        if seen is None or seen["silence_alerted"]:
            continue
        silent_ms = now_ms - seen["last_seen_ms"]
        if silent_ms < settings.silence_ms:
            continue
        device = key[len("device/"):]
        text = (
            f"Gateway {device} stopped reporting: nothing for {silent_ms // 60000} min "
            f"(threshold {settings.silence_ms // 60000} min)"
        )
        alerts.append(
            Alert(
                f"gateway-silent/{device}/{seen['last_seen_ms']}",
                "gateway-silent",
                text,
                {"device": device, "last_seen_ms": seen["last_seen_ms"]},
            )
        )
        seen["silence_alerted"] = True
        state.put(key, seen)
    return alerts


def delivery_health(state: State, settings: Settings, health) -> List[Alert]:
    key = f"health/{health.instance}"
    known = state.get(key) or {"alerted": False, "streak": 0}
    alerts = []
    details = {
        "instance": health.instance,
        "destination": health.destination,
        "consecutive_failures": health.consecutive_failures,
        "pending": health.pending,
    }
    if health.consecutive_failures == 0:
        if known["alerted"]:
            text = f"Deliveries of {health.instance} to {health.destination} work again"
            alerts.append(
                Alert(
                    f"deliveries-recovered/{health.instance}/{known['streak']}",
                    "deliveries-recovered",
                    text,
                    details,
                )
            )
        known = {"alerted": False, "streak": known["streak"] + 1}
    elif health.consecutive_failures >= settings.failure_threshold and not known["alerted"]:
        last_error = f"; last error: {health.last_error}" if health.last_error else ""
        text = (
            f"Deliveries of {health.instance} to {health.destination} keep failing: "
            f"{health.consecutive_failures} failures in a row, {health.pending} waiting"
            f"{last_error}"
        )
        alerts.append(
            Alert(
                f"deliveries-failing/{health.instance}/{known['streak']}",
                "deliveries-failing",
                text,
                {**details, "last_error": health.last_error},
            )
        )
        known["alerted"] = True
    state.put(key, known)
    return alerts


def effects(alerts: List[Alert], settings: Settings) -> Effects:
    deliveries = [d for alert in alerts for d in alert.deliveries(settings)]
    return Effects(events=[], deliveries=deliveries)


def retry_after_ms(headers: List[Tuple[str, str]], body: dict) -> Optional[int]:
    """Telegram says when to come back in `parameters.retry_after`, others in Retry-After."""
    seconds = (body.get("parameters") or {}).get("retry_after")
    if seconds is None:
        seconds = next((value for name, value in headers if name == "retry-after"), None)
    try:
        return int(seconds) * 1000 if seconds is not None else None
    except ValueError:
        return None


def judge(key: str, outcome: DeliveryOutcome) -> Verdict:
    if not isinstance(outcome, DeliveryOutcome_Response):
        return Verdict_Retry()
    response = outcome.value
    try:
        body = json.loads(response.body)
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    destination = "Telegram" if key.endswith("/" + TELEGRAM) else "the webhook"
    if 200 <= response.status < 300 and body.get("ok", True) is not False:
        return Verdict_Delivered()
    if response.status == 429 or response.status >= 500 or response.status == 408:
        wait = retry_after_ms(response.headers, body)
        return Verdict_RetryAfterMs(wait) if wait is not None else Verdict_Retry()
    # Telegram's `description` says what was wrong ("chat not found") and never holds the
    # token, which is only in the URL.
    reason = body.get("description") or response.body[:200].decode("utf-8", "replace")
    return Verdict_GiveUp(f"{destination} answered {response.status}: {reason}")


class Adapter(exports.Adapter):
    def describe(self) -> Descriptor:
        return Descriptor(
            name="notify",
            version=VERSION,
            api_version=API_VERSION,
            capabilities=[Capability.EVENTS, Capability.TICK],
            settings=[
                SettingSpec("telegram_bot_token", "Telegram bot token", False, True),
                SettingSpec("telegram_chat_id", "chat the bot writes to", False, False),
                SettingSpec(
                    "telegram_api_url",
                    f"Telegram Bot API base URL (default {TELEGRAM_API})",
                    False,
                    False,
                ),
                SettingSpec(
                    "webhook_url",
                    "URL that gets every alert as a JSON POST",
                    False,
                    True,
                ),
                SettingSpec(
                    "silence_secs",
                    "seconds a gateway may send nothing before an alert; 0 turns it off "
                    f"(default {DEFAULT_SILENCE_SECS})",
                    False,
                    False,
                ),
                SettingSpec(
                    "failure_threshold",
                    "failed delivery attempts in a row that raise an alert "
                    f"(default {DEFAULT_FAILURE_THRESHOLD})",
                    False,
                    False,
                ),
            ],
            stores=[],
            webhook_key=None,
        )

    def on_webhook(self, ctx: CallContext, request: HttpRequest) -> WebhookOutcome:
        reply = HttpReply(404, [("content-type", "application/json")],
                          b'{"error":"notify accepts no webhooks"}')
        return WebhookOutcome(reply=reply, effects=Effects(events=[], deliveries=[]))

    def on_event(self, ctx: CallContext, event: Event) -> Effects:
        settings = Settings(ctx)
        state = State(ctx)
        alerts: List[Alert] = []
        if isinstance(event, Event_SimStatusChanged):
            device_seen(state, event.value.device, ctx.now_ms)
            alerts = sim_changed(state, event.value)
        elif isinstance(event, Event_MessageReceived):
            device_seen(state, event.value.device, ctx.now_ms)
        elif isinstance(event, Event_DeliveryHealth):
            alerts = delivery_health(state, settings, event.value)
        return effects(alerts, settings)

    def on_response(
        self, ctx: CallContext, delivery: DeliveryRef, outcome: DeliveryOutcome
    ) -> ResponseOutcome:
        verdict = judge(delivery.idempotency_key, outcome)
        return ResponseOutcome(verdict=verdict, effects=Effects(events=[], deliveries=[]))

    def on_tick(self, ctx: CallContext) -> Effects:
        settings = Settings(ctx)
        return effects(silent_devices(State(ctx), settings, ctx.now_ms), settings)
