"""The BFL model catalog: every generation route, its inputs, latency, price and output size.

Used by the emulator (to validate and price like BFL) and by fluxhook itself (drop-in validation,
cost estimates, expected latency, admission slots). Validation errors come out exactly as BFL's
FastAPI/pydantic-v2 stack formats them (`{"type","loc":["body",…],"msg","input","ctx"?}`).

Sources, in order of weight: BFL's OpenAPI snapshot (`openapi-2026-04-23.json`, for every model it
lists), then `bfl/API.md` (for the rest). Where they disagree we follow the spec and say so:

* Kontext `output_format` defaults to `png` (spec), not `jpeg` (docs table).
* FLUX.2 `safety_tolerance` is 0..5 (spec, and a live 422 above 5), not 0..6 (docs) or 0..7
  (SDK-0.2, allowlisted organisations).
* FLUX.2 [pro]/[max] take no `prompt_upsampling`/`disable_pup`/`user` field: the 2026-04 spec hides
  them, so they are ignored like any unknown field. [flex] `prompt_upsampling` defaults to true and
  `guidance` to 5.0 (spec), not 4.5 (docs).
* FLUX.2 outputs are capped at 4 MP (docs and SDK-0.2 agree; the spec cannot express it).
* `flux-pro-1.0-depth` `guidance` defaults to 30 (official SDK-0.1), not 15 (an unidentified Go
  client).
* FLUX Tools follow the official SDK-0.2 models, with the public `safety_tolerance` range 0..5.
* `flux-2-flex-outpainting` is described only in API.md §2.5; the defaults it does not give
  (offsets, `effort`) are our inference.
* `image` is BFL's 2024 route (`POST /v1/image`, the getting-started page of docs.bfl.ml,
  API.md §2.7): FLUX.1 [pro] with width/height, kept as an alias of `flux-pro` (its inputs,
  price, latency and slots). Work done for it is `flux-pro`'s: see `canonical`.

Prices are credits (1 credit = $0.01, API.md §9.2). FLUX.2-style models use the megapixel formula
`first MP + (output MP - 1) x per-MP + input MP x per-MP`, with a minimum 1 MP charge; one MP is
1024 x 1024 pixels (a 256x256 output reports `output_mp` 0.06). The cost is computed in dollars and
times 100, which reproduces BFL's float noise (`7.000000000000001` for a small [max] image).
"""

import base64
import binascii
import io
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Annotated, Literal

from PIL import Image
from pydantic import AfterValidator, BaseModel, Field, HttpUrl, ValidationError, model_validator

MEGAPIXEL = 1024 * 1024  # BFL's megapixel: 256x256 is reported as 0.06 MP
MAX_PIXELS = 2048 * 2048  # 4 MP: FLUX.2 output ceiling, and where inputs are resized to


class ValidationFailed(Exception):
    """A request body BFL would answer with HTTP 422; `detail` is FastAPI's list of error items."""

    def __init__(self, detail: list[dict]) -> None:
        super().__init__(detail[0]["msg"] if detail else "validation failed")
        self.detail = detail


@dataclass(frozen=True)
class Price:
    cost: float  # credits
    input_mp: float
    output_mp: float


@dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: type[BaseModel]
    latency_s: float
    progress: bool
    cost_on_submit: bool
    webhooks: bool
    slot_class: str
    result_style: str
    alias_of: str | None = None  # another route to that model, which does the work


# ---- input models --------------------------------------------------------------------------


class OutputFormat(StrEnum):
    jpeg = "jpeg"
    png = "png"
    webp = "webp"


def _aspect_ratio(value: str | None) -> str | None:
    if value is not None and _parse_ratio(value) is None:
        raise ValueError("Aspect ratio must be between 21:9 and 9:21, written like '16:9'")
    return value


AspectRatio = Annotated[str, AfterValidator(_aspect_ratio)]
Tolerance6 = Annotated[int, Field(ge=0, le=6)]
Tolerance5 = Annotated[int, Field(ge=0, le=5)]
Side32 = Annotated[int, Field(ge=256, le=1440, multiple_of=32)]
Side64 = Annotated[int, Field(ge=64)]
ImageInput = str | None


class _Webhook(BaseModel):
    webhook_url: HttpUrl | None = None
    webhook_secret: str | None = None


class FluxPro11Inputs(_Webhook):
    prompt: str | None = ""
    image_prompt: ImageInput = None
    width: Side32 = 1024
    height: Side32 = 768
    prompt_upsampling: bool = False
    seed: int | None = None
    safety_tolerance: Tolerance6 = 2
    output_format: OutputFormat | None = OutputFormat.jpeg


class FluxDevInputs(FluxPro11Inputs):
    prompt: str = ""
    steps: Annotated[int, Field(ge=1, le=50)] | None = 28
    guidance: Annotated[float, Field(ge=1.5, le=5)] | None = 3.0


class FluxProInputs(FluxPro11Inputs):
    """FLUX.1 [pro], deprecated and absent from the spec: fields from API.md §2.1 (SDK-0.1)."""

    steps: Annotated[int, Field(ge=1, le=50)] | None = 40
    guidance: Annotated[float, Field(ge=1.5, le=5)] | None = 2.5
    interval: Annotated[float, Field(ge=1, le=4)] | None = 2.0


class FluxUltraInput(_Webhook):
    prompt: str | None = ""
    prompt_upsampling: bool = False
    seed: int | None = None
    aspect_ratio: AspectRatio = "16:9"
    safety_tolerance: Tolerance6 = 2
    output_format: OutputFormat | None = OutputFormat.jpeg
    raw: bool = False
    image_prompt: ImageInput = None
    image_prompt_strength: Annotated[float, Field(ge=0, le=1)] = 0.1


class FinetuneFluxUltraInput(_Webhook):
    finetune_id: str
    finetune_strength: Annotated[float, Field(ge=0, le=2)] = 1.2
    prompt: str | None = ""
    seed: int | None = None
    aspect_ratio: AspectRatio = "16:9"
    safety_tolerance: Tolerance6 = 2
    output_format: OutputFormat | None = OutputFormat.jpeg
    image_prompt: ImageInput = None
    image_prompt_strength: Annotated[float, Field(ge=0, le=1)] = 0.1
    prompt_upsampling: bool = False


class FluxKontextProInputs(_Webhook):
    prompt: str
    input_image: ImageInput = None
    input_image_2: ImageInput = None
    input_image_3: ImageInput = None
    input_image_4: ImageInput = None
    seed: int | None = None
    aspect_ratio: AspectRatio | None = None
    output_format: OutputFormat | None = OutputFormat.png
    prompt_upsampling: bool = False
    safety_tolerance: Tolerance6 = 2


class _EditInputs(_Webhook):
    image: str
    prompt: str | None = ""
    steps: Annotated[int, Field(ge=15, le=50)] | None = 50
    prompt_upsampling: bool | None = False
    seed: int | None = None
    guidance: Annotated[float, Field(ge=1.5, le=100)] | None = 60
    output_format: OutputFormat | None = OutputFormat.jpeg
    safety_tolerance: Tolerance6 = 2


class FluxProFillInputs(_EditInputs):
    mask: ImageInput = None


class FluxProExpandInputs(_EditInputs):
    top: Annotated[int, Field(ge=0, le=2048)] | None = 0
    bottom: Annotated[int, Field(ge=0, le=2048)] | None = 0
    left: Annotated[int, Field(ge=0, le=2048)] | None = 0
    right: Annotated[int, Field(ge=0, le=2048)] | None = 0


class FinetuneFluxProFillInputs(_Webhook):
    finetune_id: str
    finetune_strength: Annotated[float, Field(ge=0, le=2)] = 1.1
    image: str
    mask: ImageInput = None
    prompt: str = ""
    steps: Annotated[int, Field(ge=15, le=50)] = 50
    prompt_upsampling: bool = False
    seed: int | None = None
    guidance: Annotated[float, Field(ge=1.5, le=100)] = 60
    output_format: OutputFormat | None = OutputFormat.jpeg
    safety_tolerance: Tolerance6 = 2


class _ControlInputs(_Webhook):
    """Canny/Depth (deprecated, not in the spec): API.md §2.3; prompt required per API.md."""

    prompt: str
    control_image: ImageInput = None
    preprocessed_image: ImageInput = None
    prompt_upsampling: bool = False
    seed: int | None = None
    steps: Annotated[int, Field(ge=15, le=50)] | None = 50
    output_format: OutputFormat | None = OutputFormat.jpeg
    guidance: Annotated[float, Field(ge=1, le=100)] | None = 30
    safety_tolerance: Tolerance6 = 2

    @model_validator(mode="after")
    def _needs_control(self):
        if not self.control_image and not self.preprocessed_image:
            raise ValueError("Either control_image or preprocessed_image must be provided")
        return self


class FluxProCannyInputs(_ControlInputs):
    canny_low_threshold: Annotated[int, Field(ge=0, le=500)] | None = 50
    canny_high_threshold: Annotated[int, Field(ge=0, le=500)] | None = 200


class FluxProDepthInputs(_ControlInputs):
    pass


class _Flux2Base(_Webhook):
    prompt: str
    input_image: ImageInput = None
    input_image_2: ImageInput = None
    input_image_3: ImageInput = None
    input_image_4: ImageInput = None
    seed: int | None = None
    width: Side64 | None = 0  # 0 (or null) = auto: the first input image's size, else 1024
    height: Side64 | None = 0
    safety_tolerance: Tolerance5 = 2
    output_format: OutputFormat | None = OutputFormat.jpeg

    @model_validator(mode="after")
    def _at_most_4mp(self):
        return _check_4mp(self)


class Flux2KleinInputs(_Flux2Base):
    pass


class Flux2Inputs(_Flux2Base):
    input_image_5: ImageInput = None
    input_image_6: ImageInput = None
    input_image_7: ImageInput = None
    input_image_8: ImageInput = None


class Flux2FlexInputs(Flux2Inputs):
    prompt_upsampling: bool | None = True
    input_image_blob_path: str | None = None
    guidance: Annotated[float, Field(ge=1.5, le=10)] | None = 5.0
    steps: Annotated[int, Field(ge=1, le=50)] | None = 50


class Flux2FlexOutpaintingInputs(BaseModel):
    """API.md §2.5 only; no webhook fields."""

    input_image: str
    prompt: str | None = None
    width: Side64 | None = None  # None: the input image's size
    height: Side64 | None = None
    bbox_x1: int | None = None
    bbox_y1: int | None = None
    auto_crop: bool = False
    pre_padded: bool = False
    prompt_upsampling: bool | None = True
    seed: int | None = None
    steps: Annotated[int, Field(ge=1, le=100)] | None = 30
    guidance: Annotated[float, Field(ge=1, le=20)] | None = 4.0
    cache_residual_diff_threshold: Annotated[float, Field(ge=0, le=1)] | None = None
    effort: Literal["high", "medium", "low"] | None = "high"
    safety_tolerance: Tolerance5 = 2
    output_format: OutputFormat | None = OutputFormat.png

    @model_validator(mode="after")
    def _at_most_4mp(self):
        return _check_4mp(self)


class OutpaintInputs(BaseModel):
    """`/v1/flux-tools/outpainting-v1` (SDK-0.2): no webhook fields."""

    input_image: str
    width: Side64
    height: Side64
    reference_offset_x: int | None = None
    reference_offset_y: int | None = None
    auto_crop: bool = False
    mode: Literal["high", "fast"] = "high"
    prompt: str | None = None
    safety_tolerance: Tolerance5 = 2
    output_format: OutputFormat | None = OutputFormat.png

    @model_validator(mode="after")
    def _at_most_4mp(self):
        return _check_4mp(self)


class EraseInputs(_Webhook):
    image: str
    mask: str
    dilate_pixels: Annotated[int, Field(ge=0, le=25)] = 10
    seed: int | None = None
    safety_tolerance: Tolerance5 = 2
    output_format: OutputFormat | None = OutputFormat.png


class DeblurInputs(_Webhook):
    image: str
    seed: int | None = None
    safety_tolerance: Tolerance5 = 2
    output_format: OutputFormat | None = OutputFormat.png


class VtoInputs(_Webhook):
    prompt: str
    person: str
    garment: str
    seed: int | None = None
    safety_tolerance: Tolerance5 = 2
    output_format: OutputFormat | None = OutputFormat.jpeg


def _check_4mp(inputs):
    # A side left out is the input image's (or 1024), as the output size is worked out.
    default = _capped(_first_image(dict(inputs), _FLUX2_IMAGES) or (1024, 1024))
    pixels = (inputs.width or default[0]) * (inputs.height or default[1])
    if pixels > MAX_PIXELS:
        raise ValueError(f"width*height ({pixels}) exceeds the 4 MP limit ({MAX_PIXELS})")
    return inputs


# ---- the catalog ---------------------------------------------------------------------------


def _spec(name, inputs, latency_s, *, progress=False, flux2=False, webhooks=True) -> ModelSpec:
    return ModelSpec(
        name=name,
        inputs=inputs,
        latency_s=latency_s,
        progress=progress,
        cost_on_submit=flux2,
        webhooks=webhooks,
        slot_class="flux-kontext-max" if name == "flux-kontext-max" else "default",
        result_style="flux2" if flux2 else "flux1",
    )


# Latencies: API.md §9.1 emulator defaults; the ones it does not name are inferred from the
# nearest sibling. `progress`: flux-dev reports fractions live; FLUX.1 [pro]/1.1 [pro] share its
# stack (inferred); FLUX.2 [pro]/[max] were recorded without progress.
_SPECS = (
    _spec("flux-pro-1.1", FluxPro11Inputs, 4.0, progress=True),
    _spec("flux-dev", FluxDevInputs, 3.0, progress=True),
    _spec("flux-pro", FluxProInputs, 3.0, progress=True),
    _spec("flux-pro-1.1-ultra", FluxUltraInput, 10.0),
    _spec("flux-pro-1.1-ultra-finetuned", FinetuneFluxUltraInput, 10.0),
    _spec("flux-kontext-pro", FluxKontextProInputs, 7.0),
    _spec("flux-kontext-max", FluxKontextProInputs, 7.0),
    _spec("flux-pro-1.0-fill", FluxProFillInputs, 4.0),
    _spec("flux-pro-1.0-fill-finetuned", FinetuneFluxProFillInputs, 4.0),
    _spec("flux-pro-1.0-expand", FluxProExpandInputs, 6.0),
    _spec("flux-pro-1.0-canny", FluxProCannyInputs, 4.0),
    _spec("flux-pro-1.0-depth", FluxProDepthInputs, 4.0),
    _spec("flux-2-pro", Flux2Inputs, 9.0, flux2=True),
    _spec("flux-2-pro-preview", Flux2Inputs, 9.0, flux2=True),
    _spec("flux-2-max", Flux2Inputs, 20.0, flux2=True),
    _spec("flux-2-flex", Flux2FlexInputs, 7.0, flux2=True),
    _spec("flux-2-klein-4b", Flux2KleinInputs, 1.0, flux2=True),
    _spec("flux-2-klein-9b", Flux2KleinInputs, 1.0, flux2=True),
    _spec("flux-2-klein-9b-preview", Flux2KleinInputs, 1.0, flux2=True),
    _spec("flux-2-flex-outpainting", Flux2FlexOutpaintingInputs, 7.0, flux2=True, webhooks=False),
    _spec("flux-tools/outpainting-v1", OutpaintInputs, 6.0, flux2=True, webhooks=False),
    _spec("flux-tools/erase-v1", EraseInputs, 4.0, flux2=True),
    _spec("flux-tools/deblur-v1", DeblurInputs, 4.0, flux2=True),
    _spec("flux-tools/vto-v1", VtoInputs, 8.0, flux2=True),
)
MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}
# Routes that are another name for a model. Listed after every model, so whatever walks the
# catalog meets the model first (its schema, its tests).
ALIASES = {"image": "flux-pro"}
MODELS |= {
    alias: replace(MODELS[model], name=alias, alias_of=model) for alias, model in ALIASES.items()
}

# Fixed prices in credits (API.md §9.2). Finetuned variants: the base model's price (inferred).
_FIXED_CREDITS = {
    "flux-pro-1.1": 4.0,
    "flux-dev": 2.5,
    "flux-pro": 5.0,
    "flux-pro-1.1-ultra": 6.0,
    "flux-pro-1.1-ultra-finetuned": 6.0,
    "flux-kontext-pro": 4.0,
    "flux-kontext-max": 8.0,
    "flux-pro-1.0-fill": 5.0,
    "flux-pro-1.0-fill-finetuned": 5.0,
    "flux-pro-1.0-expand": 5.0,
    "flux-pro-1.0-canny": 5.0,
    "flux-pro-1.0-depth": 5.0,
}
# Megapixel prices in dollars: (first MP, each further output MP and each input MP). [flex] is
# 5 c/MP (the 2026-01 price). FLUX Tools: a third-party listing of Erase ($0.03 + $0.004/MP),
# applied to all four tools (inferred); flex-outpainting as [flex] (inferred).
_TOOL_USD = (0.03, 0.004)
_MP_USD = {
    "flux-2-pro": (0.03, 0.015),
    "flux-2-pro-preview": (0.03, 0.015),
    "flux-2-max": (0.07, 0.03),
    "flux-2-flex": (0.05, 0.05),
    "flux-2-flex-outpainting": (0.05, 0.05),
    "flux-2-klein-4b": (0.014, 0.001),
    "flux-2-klein-9b": (0.015, 0.002),
    "flux-2-klein-9b-preview": (0.015, 0.002),
    "flux-tools/outpainting-v1": _TOOL_USD,
    "flux-tools/erase-v1": _TOOL_USD,
    "flux-tools/deblur-v1": _TOOL_USD,
    "flux-tools/vto-v1": _TOOL_USD,
}
_FLUX2_IMAGES = tuple(["input_image"] + [f"input_image_{n}" for n in range(2, 9)])
_KONTEXT_IMAGES = _FLUX2_IMAGES[:4]


def get_model(name: str) -> ModelSpec | None:
    return MODELS.get(name)


def canonical(model: ModelSpec) -> ModelSpec:
    """The model an alias route stands for (`image` -> `flux-pro`); a model is its own."""
    return MODELS[model.alias_of] if model.alias_of else model


# ---- validation ----------------------------------------------------------------------------


def parse_json_body(raw: bytes) -> object:
    """The body as JSON, or FastAPI's 422: `json_invalid` for bad JSON, `missing` for no body.

    FastAPI treats an empty body (and a literal `null`) as an absent required body, hence
    `missing` at `["body"]` rather than `json_invalid`. NaN and infinite numbers are not JSON
    (and could not be echoed back in an error), so they are `json_invalid` too.
    """
    if not raw.strip():
        raise ValidationFailed([_missing_body()])
    try:
        return json.loads(raw, parse_constant=_not_finite, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise ValidationFailed([_json_invalid(exc.pos, exc.msg)]) from None
    except UnicodeDecodeError as exc:
        raise ValidationFailed([_json_invalid(exc.start, "Invalid UTF-8")]) from None
    except _NotFinite as exc:
        position = max(raw.find(exc.args[0].encode()), 0)
        raise ValidationFailed([_json_invalid(position, "Numbers must be finite")]) from None
    except RecursionError:
        raise ValidationFailed([_json_invalid(0, "Maximum nesting depth exceeded")]) from None


class _NotFinite(ValueError):
    pass


def _not_finite(text: str) -> float:
    raise _NotFinite(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(text)
    return value


def validate(model: ModelSpec, body: object) -> BaseModel:
    """The body as the model's validated inputs; unknown fields are dropped, like BFL does."""
    if body is None:
        raise ValidationFailed([_missing_body()])
    try:
        return model.inputs.model_validate(body, from_attributes=True)
    except ValidationError as exc:
        raise ValidationFailed(fastapi_detail(exc, ("body",))) from None


def validate_inputs(model: ModelSpec, body: object) -> dict:
    """Validated inputs with defaults filled."""
    return validate(model, body).model_dump(mode="json")


def fastapi_detail(exc: ValidationError, prefix: tuple[str, ...]) -> list[dict]:
    """pydantic's errors as FastAPI serves them: loc prefixed, no `url`, ctx JSON-safe."""
    items = []
    for error in exc.errors(include_url=False):
        item = {**error, "loc": [*prefix, *error["loc"]]}
        if "ctx" in item:
            item["ctx"] = _json_safe(item["ctx"])
        items.append(item)
    return items


def _json_safe(value: object) -> object:
    # FastAPI's jsonable_encoder turns an exception in ctx (value_error) into {}.
    return json.loads(
        json.dumps(value, default=lambda o: {} if isinstance(o, Exception) else str(o))
    )


def _missing_body() -> dict:
    return {"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}


def _json_invalid(pos: int, reason: str) -> dict:
    return {
        "type": "json_invalid",
        "loc": ["body", pos],
        "msg": "JSON decode error",
        "input": {},
        "ctx": {"error": reason},
    }


# ---- output size and price -----------------------------------------------------------------


def output_size(model: ModelSpec, inputs: dict) -> tuple[int, int]:
    """The pixels BFL would produce for these (validated) inputs."""
    model = canonical(model)
    return _SIZERS.get(model.name, _sized_like_image("image"))(inputs)


def price(model: ModelSpec, inputs: dict) -> Price:
    model = canonical(model)
    width, height = output_size(model, inputs)
    output_mp = round(width * height / MEGAPIXEL, 2)
    input_mp = round(float(sum(_input_megapixels(model, inputs))), 2)
    if model.name in _FIXED_CREDITS:
        return Price(_FIXED_CREDITS[model.name], input_mp, output_mp)
    first, per_mp = _MP_USD[model.name]
    dollars = first + max(0.0, output_mp - 1) * per_mp + input_mp * per_mp
    return Price(dollars * 100, input_mp, output_mp)


def _input_megapixels(model: ModelSpec, inputs: dict) -> list[float]:
    names = {
        "flux-tools/vto-v1": ("person", "garment"),
        "flux-tools/erase-v1": ("image",),
        "flux-tools/deblur-v1": ("image",),
    }.get(model.name, _FLUX2_IMAGES)
    return [_megapixels(inputs[name]) for name in names if inputs.get(name)]


def _megapixels(image: str) -> float:
    # An input BFL cannot size for us (a URL, undecodable data) counts as 1 MP; larger inputs
    # are resized to 4 MP before pricing.
    size = image_size(image)
    return min(size[0] * size[1], MAX_PIXELS) / MEGAPIXEL if size else 1.0


def image_size(value: object) -> tuple[int, int] | None:
    """(width, height) of a base64 (or data-URL) image, reading only its header; None if not one."""
    if not isinstance(value, str) or value.startswith(("http://", "https://")):
        return None
    data = value.split(",", 1)[1] if value.startswith("data:") else value
    for chunk in (data[: 256 * 1024 // 4 * 4], data):  # the header is almost always in 256 KiB
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return Image.open(io.BytesIO(base64.b64decode(chunk))).size
        except (binascii.Error, ValueError, OSError, Image.DecompressionBombError):
            continue
    return None


def _parse_ratio(value: str) -> float | None:
    parts = value.split(":")
    if len(parts) != 2 or not all(part.isdigit() and int(part) > 0 for part in parts):
        return None
    ratio = int(parts[0]) / int(parts[1])
    return ratio if 9 / 21 <= ratio <= 21 / 9 else None


def _from_ratio(ratio: float, pixels: int, multiple: int) -> tuple[int, int]:
    width = max(multiple, round(math.sqrt(pixels * ratio) / multiple) * multiple)
    height = max(multiple, round(math.sqrt(pixels / ratio) / multiple) * multiple)
    return width, height


def _capped(size: tuple[int, int]) -> tuple[int, int]:
    width, height = size
    if width * height <= MAX_PIXELS:
        return width, height
    scale = math.sqrt(MAX_PIXELS / (width * height))
    return max(1, int(width * scale)), max(1, int(height * scale))


def _first_image(inputs: dict, names) -> tuple[int, int] | None:
    return next((size for name in names if (size := image_size(inputs.get(name)))), None)


def _sized_like_image(*names: str) -> Callable[[dict], tuple[int, int]]:
    return lambda inputs: _capped(_first_image(inputs, names) or (1024, 1024))


def _fixed_size(inputs: dict) -> tuple[int, int]:
    return inputs["width"], inputs["height"]


def _ultra_size(inputs: dict) -> tuple[int, int]:
    return _from_ratio(_parse_ratio(inputs["aspect_ratio"]), MAX_PIXELS, 32)  # ~4 MP


def _kontext_size(inputs: dict) -> tuple[int, int]:
    if inputs.get("aspect_ratio"):
        ratio = _parse_ratio(inputs["aspect_ratio"])
    else:  # no aspect ratio: the first input image's, else square
        width, height = _first_image(inputs, _KONTEXT_IMAGES) or (1, 1)
        ratio = min(max(width / height, 9 / 21), 21 / 9)
    return _from_ratio(ratio, MEGAPIXEL, 16)  # ~1 MP


def _flux2_size(inputs: dict) -> tuple[int, int]:
    base = _capped(_first_image(inputs, _FLUX2_IMAGES) or (1024, 1024))
    return _capped((inputs.get("width") or base[0], inputs.get("height") or base[1]))


def _expand_size(inputs: dict) -> tuple[int, int]:
    width, height = _first_image(inputs, ("image",)) or (1024, 1024)
    grow = {side: inputs.get(side) or 0 for side in ("top", "bottom", "left", "right")}
    return _capped((width + grow["left"] + grow["right"], height + grow["top"] + grow["bottom"]))


def _outpaint_size(inputs: dict) -> tuple[int, int]:
    base = _capped(_first_image(inputs, ("input_image",)) or (1024, 1024))
    return _capped((inputs.get("width") or base[0], inputs.get("height") or base[1]))


_SIZERS: dict[str, Callable[[dict], tuple[int, int]]] = {
    "flux-pro-1.1": _fixed_size,
    "flux-dev": _fixed_size,
    "flux-pro": _fixed_size,
    "flux-pro-1.1-ultra": _ultra_size,
    "flux-pro-1.1-ultra-finetuned": _ultra_size,
    "flux-kontext-pro": _kontext_size,
    "flux-kontext-max": _kontext_size,
    "flux-pro-1.0-expand": _expand_size,
    "flux-pro-1.0-canny": _sized_like_image("control_image", "preprocessed_image"),
    "flux-pro-1.0-depth": _sized_like_image("control_image", "preprocessed_image"),
    "flux-2-flex-outpainting": _outpaint_size,
    "flux-tools/outpainting-v1": _outpaint_size,
    "flux-tools/vto-v1": _sized_like_image("person"),
    **dict.fromkeys(
        (
            "flux-2-pro",
            "flux-2-pro-preview",
            "flux-2-max",
            "flux-2-flex",
            "flux-2-klein-4b",
            "flux-2-klein-9b",
            "flux-2-klein-9b-preview",
        ),
        _flux2_size,
    ),
}
