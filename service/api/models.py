"""`GET /v1/models`: every model of the catalog, with its kind and what it requires.

Everything here is derived from each model's pydantic input schema, so the web page never keeps
its own copy of the catalog. A model is `text-to-image` when a body of just a prompt validates
(what a prompt form can offer); the others say in `needs` what else they require: an input
image or a mask (`image-to-image`), or a finetune (`finetuned`).
"""

import functools

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from service import catalog
from service.api.auth import authenticate

# Offered when the model accepts them; BFL takes any ratio between 21:9 and 9:21.
COMMON_RATIOS = ("21:9", "16:9", "3:2", "4:3", "1:1", "3:4", "2:3", "9:16", "9:21")
PROBE = {"prompt": "a probe"}


def _probe_errors(spec: catalog.ModelSpec, **fields) -> list[dict]:
    try:
        spec.inputs.model_validate(PROBE | fields)
    except ValidationError as exc:
        return exc.errors()
    return []


def _accepts(spec: catalog.ModelSpec, **fields) -> bool:
    return not _probe_errors(spec, **fields)


def _needs(spec: catalog.ModelSpec) -> str | None:
    """Why a prompt alone is not enough, e.g. `image, mask`, or the model's own rule."""
    errors = _probe_errors(spec)
    fields = [".".join(map(str, error["loc"])) for error in errors if error["loc"]]
    rules = [error["msg"].removeprefix("Value error, ") for error in errors if not error["loc"]]
    return "; ".join(filter(None, [", ".join(fields), *rules])) or None


def _kind(spec: catalog.ModelSpec) -> str:
    if _accepts(spec):
        return "text-to-image"
    finetune = any(error["loc"] == ("finetune_id",) for error in _probe_errors(spec))
    return "finetuned" if finetune else "image-to-image"


def _variants(field: dict) -> tuple[dict, bool]:
    """The non-null branch of an `anyOf` (pydantic's `X | None`) and whether null is allowed."""
    branches = field.get("anyOf", [field])
    concrete = [b for b in branches if b.get("type") != "null"]
    return (concrete[0] if concrete else {}), len(concrete) < len(branches)


def _dimension(field: dict) -> dict:
    bounds, nullable = _variants(field)
    default = field.get("default")
    return {
        "minimum": bounds.get("minimum"),
        "maximum": bounds.get("maximum"),
        "multiple_of": bounds.get("multipleOf"),
        # 0 or null means "auto" (the input image's size, else 1024): the field may stay empty.
        "default": default or None,
        "optional": nullable or not default,
    }


def _aspect_ratio(spec: catalog.ModelSpec, field: dict) -> dict:
    _, nullable = _variants(field)
    choices = [ratio for ratio in COMMON_RATIOS if _accepts(spec, aspect_ratio=ratio)]
    return {"default": field.get("default"), "optional": nullable, "choices": choices}


def describe(spec: catalog.ModelSpec) -> dict:
    schema = spec.inputs.model_json_schema()
    fields = schema["properties"]
    takes_size = "width" in fields and "height" in fields
    return {
        "name": spec.name,
        "kind": _kind(spec),
        "needs": _needs(spec),
        "prompt_required": "prompt" in schema.get("required", []),
        "size": "dimensions"
        if takes_size
        else "aspect_ratio"
        if "aspect_ratio" in fields
        else None,
        "width": _dimension(fields["width"]) if takes_size else None,
        "height": _dimension(fields["height"]) if takes_size else None,
        "aspect_ratio": _aspect_ratio(spec, fields["aspect_ratio"])
        if "aspect_ratio" in fields
        else None,
        "seed": "seed" in fields,
        "alias_of": spec.alias_of,
    }


@functools.cache
def offered() -> tuple[dict, ...]:
    """Built once: the catalog does not change while the process runs."""
    return tuple(describe(spec) for spec in catalog.MODELS.values())


async def list_models(request: Request) -> JSONResponse:
    await authenticate(request)
    return JSONResponse({"models": list(offered())})
