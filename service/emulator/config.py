"""The emulator's run-time configuration: faults, timing and BFL's limits, validated.

`time_scale` scales BFL's clock: task latency, progress, webhook retry gaps, the life of delivery
URLs and task retention. Values a tester sets in seconds on purpose (`webhook_delay_s`,
`submit_stall_s`, `webhook_timeout_s`) are not scaled, nor is the delivery hop
(`delivery_ttfb_s`, `delivery_bytes_per_s`): it is the network between BFL's blob storage and
the client, not BFL's clock, and a benchmark sets it to real values (0.15 s, 20e6 B/s).
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.catalog import MODELS

Probability = Annotated[float, Field(ge=0, le=1)]
Seconds = Annotated[float, Field(ge=0)]


class ConfigRejected(ValueError):
    """A config update with unknown keys or bad values; the message says which."""


class EmulatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    time_scale: Annotated[float, Field(gt=0)] = 1.0
    latency_s: Seconds | dict[str, Seconds] | None = None  # overrides catalog latencies (unscaled)
    manual: bool = False  # tasks finish only through POST /_emulator/tasks/{id}/finish
    seed: int | None = None  # None: drawn once at start-up and shown here
    region: Annotated[str, Field(pattern=r"^[a-z0-9-]{1,32}$")] = "eu4"
    global_mode: bool = False
    credits: Seconds = 1000.0
    active_limit: Annotated[int, Field(ge=1)] = 24  # BFL: 24 active tasks per key
    kontext_max_limit: Annotated[int, Field(ge=1)] = 6  # of which flux-kontext-max: 6
    url_ttl_s: Annotated[float, Field(gt=0)] = 600.0  # 10 minutes: BFL's signed URLs expire
    retention_s: Annotated[float, Field(gt=0)] = 3600.0  # then get_result says Task not found
    # The download of a `/delivery/...` image, like Azure blob storage over the internet; real
    # seconds and bytes per second, never scaled. Rate None: the body goes out at loopback speed.
    delivery_ttfb_s: Seconds = 0.0  # request received -> status line and headers sent
    delivery_bytes_per_s: Annotated[float, Field(gt=0)] | None = None

    submit_5xx: Probability = 0.0
    submit_timeout: Probability = 0.0
    submit_stall_s: Seconds = 60.0

    dialect: Literal["current", "legacy"] = "current"
    legacy_moderated_status: Literal[
        "random", "Content Moderated", "GENERATED CONTENT MODERATED"
    ] = "random"
    progress_events: bool = False
    signature_header: bool = False
    drop_webhooks: Probability = 0.0
    duplicate_webhooks: Probability = 0.0
    webhook_delay_s: tuple[Seconds, Seconds] = (0.0, 0.0)
    reorder: bool = False
    webhook_before_response: bool = False
    webhook_timeout_s: Annotated[float, Field(gt=0)] = 30.0  # per attempt, like BFL's 30 s
    webhook_retry_s: tuple[Seconds, ...] = (1.0, 5.0, 30.0)  # gaps before attempts 2, 3, 4

    @field_validator("latency_s")
    @classmethod
    def _known_models(cls, value):
        # An alias route (`image`) runs as its model: its latency is the model's.
        known = {name for name, spec in MODELS.items() if not spec.alias_of}
        unknown = sorted(set(value) - known) if isinstance(value, dict) else []
        if unknown:
            raise ValueError(f"unknown model(s): {', '.join(unknown)}")
        return value

    @model_validator(mode="after")
    def _ordered_delay(self):
        if self.webhook_delay_s[0] > self.webhook_delay_s[1]:
            raise ValueError("webhook_delay_s must be [min, max] with min <= max")
        return self

    def scaled(self, seconds: float) -> float:
        return seconds * self.time_scale

    def latency(self, model: str) -> float:
        """Seconds a task of `model` runs, already scaled."""
        if isinstance(self.latency_s, dict) and model in self.latency_s:
            return self.scaled(self.latency_s[model])
        if isinstance(self.latency_s, float | int):
            return self.scaled(self.latency_s)
        return self.scaled(MODELS[model].latency_s)

    def updated(self, changes: object) -> "EmulatorConfig":
        """A copy with `changes` (a JSON object) applied; raises ConfigRejected."""
        if not isinstance(changes, dict):
            raise ConfigRejected("the config update must be a JSON object")
        try:
            return EmulatorConfig.model_validate({**self.model_dump(), **changes})
        except ValidationError as exc:
            raise ConfigRejected(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "config"
        what = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        problems.append(f"{where}: {what}")
    return "invalid emulator config: " + "; ".join(problems)
