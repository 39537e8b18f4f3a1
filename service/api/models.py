"""`GET /v1/models`: the text-to-image models a prompt form can offer, read from the catalog.

Everything here is derived from each model's pydantic input schema, so the web page never keeps
its own copy of the catalog. A model is offered when a body of just a prompt validates: the ones
that need an input image, a mask or a finetune (fill, expand, erase, canny, ...) are left out.
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


def _accepts(spec: catalog.ModelSpec, **fields) -> bool:
    try:
        spec.inputs.model_validate(PROBE | fields)
    except ValidationError:
        return False
    return True


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
    }


@functools.cache
def offered() -> tuple[dict, ...]:
    """Built once: the catalog does not change while the process runs."""
    return tuple(describe(spec) for spec in catalog.MODELS.values() if _accepts(spec))


async def list_models(request: Request) -> JSONResponse:
    await authenticate(request)
    return JSONResponse({"models": list(offered())})
