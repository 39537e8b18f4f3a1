"""The model catalog: BFL's routes, their inputs (checked against BFL's OpenAPI), prices, sizes."""

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from service import catalog
from service.catalog import MODELS, ValidationFailed, get_model, validate_inputs

SPEC = json.loads((Path(__file__).parent / "fixtures/bfl/openapi-2026-04-23.json").read_text())
BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
LENGTHS = ("minLength", "maxLength")
API_MD_MODELS = {  # API.md §2, every route
    "flux-pro-1.1", "flux-dev", "flux-pro", "flux-pro-1.1-ultra", "flux-kontext-pro",
    "flux-kontext-max", "flux-pro-1.0-fill", "flux-pro-1.0-expand", "flux-pro-1.0-canny",
    "flux-pro-1.0-depth", "flux-pro-1.1-ultra-finetuned", "flux-pro-1.0-fill-finetuned",
    "flux-2-pro", "flux-2-pro-preview", "flux-2-max", "flux-2-flex", "flux-2-klein-4b",
    "flux-2-klein-9b", "flux-2-klein-9b-preview", "flux-2-flex-outpainting",
    "flux-tools/outpainting-v1", "flux-tools/erase-v1", "flux-tools/deblur-v1", "flux-tools/vto-v1",
    "image",  # §2.7, historical: BFL's 2024 route, an alias of flux-pro
}  # fmt: skip


def png(width: int, height: int) -> str:
    out = io.BytesIO()
    Image.new("RGB", (width, height)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def errors(model: str, body: object) -> list[dict]:
    with pytest.raises(ValidationFailed) as failed:
        validate_inputs(get_model(model), body)
    return failed.value.detail


# ---- BFL's OpenAPI, compared generically over the JSON schema ------------------------------


def spec_models() -> list[tuple[str, dict]]:
    out = []
    for path, operations in SPEC["paths"].items():
        body = operations.get("post", {}).get("requestBody", {})
        ref = body.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
        if ref and path.startswith("/v1/flux"):
            out.append((path.removeprefix("/v1/"), _resolve(SPEC, ref)))
    return out


def _resolve(document: dict, ref: str) -> dict:
    node = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def describe(document: dict, schema: dict) -> dict:
    """What a field accepts: its types, enum values, numeric bounds and string lengths."""
    branches = schema.get("anyOf", [schema])
    facts: dict = {"types": set(), "enum": set()}
    for branch in branches:
        if "$ref" in branch:
            branch = _resolve(document, branch["$ref"])
        facts["types"].add(branch.get("type", "any"))
        facts["enum"].update(branch.get("enum", ()))
        for name in BOUNDS + LENGTHS:
            if name in branch:
                facts[name] = float(branch[name])
    return facts


@pytest.mark.parametrize(("name", "expected"), spec_models(), ids=lambda value: str(value)[:40])
def test_inputs_match_bfls_openapi(name: str, expected: dict):
    model = get_model(name)
    assert model is not None, name
    actual = model.inputs.model_json_schema()
    assert set(actual["properties"]) == set(expected["properties"])
    assert set(actual.get("required", [])) == set(expected.get("required", []))
    for field, spec_field in expected["properties"].items():
        ours = actual["properties"][field]
        assert ours.get("default") == spec_field.get("default"), field
        assert describe(actual, ours) == describe(SPEC, spec_field), field


def test_the_spec_lists_the_models_we_compare():
    assert len(spec_models()) == 16


# ---- the catalog ---------------------------------------------------------------------------


def test_every_api_md_model_is_in_the_catalog():
    assert set(MODELS) == API_MD_MODELS
    assert get_model("flux-9000") is None
    assert MODELS["flux-kontext-max"].slot_class == "flux-kontext-max"
    assert {spec.slot_class for name, spec in MODELS.items() if name != "flux-kontext-max"} == {
        "default"
    }
    assert not MODELS["flux-2-flex-outpainting"].webhooks
    assert not MODELS["flux-tools/outpainting-v1"].webhooks
    assert MODELS["flux-dev"].progress
    assert not MODELS["flux-2-max"].progress
    assert (MODELS["flux-dev"].result_style, MODELS["flux-2-pro"].result_style) == (
        "flux1",
        "flux2",
    )
    assert MODELS["flux-2-pro"].cost_on_submit
    assert not MODELS["flux-kontext-pro"].cost_on_submit


def test_v1_image_is_an_alias_of_flux_pro():
    image, pro = get_model("image"), get_model("flux-pro")
    assert (image.name, image.alias_of, image.inputs) == ("image", "flux-pro", pro.inputs)
    assert catalog.canonical(image) is pro and catalog.canonical(pro) is pro
    assert [name for name, spec in MODELS.items() if spec.alias_of] == ["image"]
    assert list(MODELS).index("image") > list(MODELS).index("flux-pro"), "the model comes first"
    inputs = validate_inputs(image, {"prompt": "x", "width": 1024, "height": 1024})
    assert catalog.output_size(image, inputs) == (1024, 1024)
    assert catalog.price(image, inputs) == catalog.price(pro, inputs) == catalog.Price(5.0, 0, 1.0)


def test_defaults_are_filled_and_unknown_fields_dropped():
    inputs = validate_inputs(get_model("flux-dev"), {"prompt": "x", "colour": "blue"})
    assert "colour" not in inputs
    assert (inputs["width"], inputs["height"], inputs["steps"], inputs["guidance"]) == (
        1024,
        768,
        28,
        3.0,
    )
    assert (inputs["output_format"], inputs["safety_tolerance"]) == ("jpeg", 2)
    kontext = validate_inputs(get_model("flux-kontext-pro"), {"prompt": "x"})
    assert kontext["output_format"] == "png"  # the spec's default, not the docs' jpeg


def test_validation_errors_are_fastapi_shaped():
    assert errors("flux-dev", {"width": 2048}) == [
        {
            "type": "less_than_equal",
            "loc": ["body", "width"],
            "msg": "Input should be less than or equal to 1440",
            "input": 2048,
            "ctx": {"le": 1440},
        }
    ]
    assert errors("flux-2-pro", {"width": 512}) == [
        {
            "type": "missing",
            "loc": ["body", "prompt"],
            "msg": "Field required",
            "input": {"width": 512},
        }
    ]
    assert errors("flux-dev", {"height": 1000})[0]["type"] == "multiple_of"
    assert errors("flux-dev", {"steps": "many"})[0]["type"] == "int_parsing"
    assert errors("flux-dev", {"prompt": 3})[0]["type"] == "string_type"
    assert errors("flux-2-pro", {"prompt": "x", "safety_tolerance": 6})[0]["ctx"] == {"le": 5}
    assert errors("flux-2-pro", {"prompt": "x", "output_format": "gif"})[0]["type"] == "enum"
    assert errors("flux-dev", ["prompt"]) == [
        {
            "type": "model_attributes_type",
            "loc": ["body"],
            "msg": "Input should be a valid dictionary or object to extract fields from",
            "input": ["prompt"],
        }
    ]
    assert all("url" not in item for item in errors("flux-dev", {"width": "x", "seed": "y"}))


def test_webhook_fields():
    dev = get_model("flux-dev")
    inputs = validate_inputs(
        dev, {"webhook_url": "https://example.com/hook", "webhook_secret": "s"}
    )
    assert (inputs["webhook_url"], inputs["webhook_secret"]) == ("https://example.com/hook", "s")
    assert errors("flux-dev", {"webhook_url": "ftp://example.com"})[0]["type"] == "url_scheme"
    too_long = "https://example.com/" + "a" * 2100
    assert errors("flux-dev", {"webhook_url": too_long})[0]["type"] == "url_too_long"
    outpaint = {"input_image": "aW1n", "width": 64, "height": 64, "webhook_url": "https://x.io"}
    assert "webhook_url" not in validate_inputs(get_model("flux-tools/outpainting-v1"), outpaint)


def test_cross_field_rules_are_value_errors():
    (item,) = errors("flux-2-pro", {"prompt": "x", "width": 4096, "height": 4096})
    assert (item["type"], item["loc"], item["ctx"]) == ("value_error", ["body"], {"error": {}})
    assert errors("flux-kontext-pro", {"prompt": "x", "aspect_ratio": "30:1"})[0]["loc"] == [
        "body",
        "aspect_ratio",
    ]
    assert errors("flux-pro-1.0-canny", {"prompt": "x"})[0]["type"] == "value_error"


def test_parse_json_body():
    assert catalog.parse_json_body(b'{"a": 1}') == {"a": 1}
    with pytest.raises(ValidationFailed) as failed:
        catalog.parse_json_body(b'{"a": }')
    assert failed.value.detail == [
        {
            "type": "json_invalid",
            "loc": ["body", 6],
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": "Expecting value"},
        }
    ]
    for raw in (b"", b"  "):
        with pytest.raises(ValidationFailed) as failed:
            catalog.parse_json_body(raw)
        assert failed.value.detail[0]["type"] == "missing"
    for raw in (b"\xff\xfe", b'{"seed": NaN}', b'{"seed": 1e999}', b"[" * 100_000):
        with pytest.raises(ValidationFailed) as failed:
            catalog.parse_json_body(raw)
        assert failed.value.detail[0]["type"] == "json_invalid"


def test_every_model_accepts_a_minimal_body():
    image = png(64, 48)
    minimal = {
        "prompt": "x", "image": image, "mask": image, "finetune_id": "me/lora",
        "input_image": image, "width": 512, "height": 512, "person": image, "garment": image,
        "control_image": image,
    }  # fmt: skip
    for name, model in MODELS.items():
        inputs = validate_inputs(model, minimal)
        width, height = catalog.output_size(model, inputs)
        assert width * height > 0, name
        assert catalog.price(model, inputs).cost > 0, name


# ---- output size and price -----------------------------------------------------------------


def test_output_sizes():
    def size(name: str, **body) -> tuple[int, int]:
        model = get_model(name)
        return catalog.output_size(model, validate_inputs(model, {"prompt": "x", **body}))

    assert size("flux-dev", width=512, height=256) == (512, 256)
    assert size("flux-pro-1.1-ultra") == (2720, 1536)  # ~4 MP at 16:9
    assert size("flux-kontext-pro") == (1024, 1024)  # ~1 MP, square by default
    assert size("flux-kontext-pro", aspect_ratio="16:9") == (1360, 768)
    assert size("flux-kontext-pro", input_image=png(400, 200)) == (1456, 720)
    assert size("flux-2-pro") == (1024, 1024)
    assert size("flux-2-pro", input_image=png(640, 480)) == (640, 480)
    assert size("flux-2-pro", input_image="https://example.com/a.png") == (1024, 1024)
    assert size("flux-2-pro", width=800) == (800, 1024)
    assert size("flux-pro-1.0-expand", image=png(100, 100), top=10, left=5) == (105, 110)


def test_prices_match_bfl():
    def price(name: str, **body) -> catalog.Price:
        model = get_model(name)
        return catalog.price(model, validate_inputs(model, {"prompt": "x", **body}))

    # recorded: flux-2-max and flux-2-pro at 256x256 (minimum 1 MP charge, float noise and all)
    assert price("flux-2-max", width=256, height=256) == catalog.Price(7.000000000000001, 0.0, 0.06)
    assert price("flux-2-pro", width=256, height=256) == catalog.Price(3.0, 0.0, 0.06)
    assert price("flux-2-pro", width=2048, height=1024).cost == pytest.approx(4.5)
    assert price("flux-2-pro", input_image=png(1024, 1024)).cost == pytest.approx(4.5)
    assert price("flux-2-klein-4b").cost == pytest.approx(1.4)
    assert price("flux-2-klein-9b").cost == pytest.approx(1.5)
    assert price("flux-2-flex").cost == pytest.approx(5.0)
    assert price("flux-dev").cost == 2.5
    assert price("flux-kontext-max").cost == 8.0
    assert price("flux-pro-1.1").cost == 4.0
    assert price("flux-pro-1.1-ultra").cost == 6.0


def test_a_flux2_side_left_out_counts_as_the_default_for_the_4mp_limit():
    """Found by schemathesis: a huge width with no height passed as 0 pixels."""
    spec = catalog.get_model("flux-2-pro")
    with pytest.raises(catalog.ValidationFailed, match="4 MP"):
        catalog.validate(spec, {"prompt": "x", "width": 1_000_000_000})
    assert catalog.validate(spec, {"prompt": "x", "width": 2048})
