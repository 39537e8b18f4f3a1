// The generate form: its model list and size fields come from GET /v1/models; it submits to
// POST /v1/{model} and shows the server's validation errors (the server is the one truth).

import { ApiError, modelPath, request } from "./api.js";

const MODEL_ITEM = "fluxhook.model";

function remembered() {
  try {
    return localStorage.getItem(MODEL_ITEM);
  } catch {
    return null;
  }
}

function remember(name) {
  try {
    localStorage.setItem(MODEL_ITEM, name);
  } catch {
    // a preference only
  }
}

function option(value, label) {
  const node = document.createElement("option");
  node.value = value;
  node.textContent = label;
  return node;
}

function setBounds(input, bounds) {
  const attributes = { min: bounds.minimum, max: bounds.maximum, step: bounds.multiple_of };
  for (const [attribute, value] of Object.entries(attributes)) {
    if (value === null || value === undefined) input.removeAttribute(attribute);
    else input.setAttribute(attribute, String(value));
  }
  input.required = !bounds.optional;
  input.placeholder = bounds.optional ? "auto" : "";
  input.value = bounds.default ?? "";
}

// A number if the field holds one, else the raw text (so the server names the problem).
function numberOrText(value) {
  const number = Number(value);
  return value.trim() !== "" && Number.isFinite(number) ? number : value;
}

// FastAPI's detail: a list of {loc, msg}, or a string.
export function errorLines(detail) {
  if (typeof detail === "string") return [detail];
  if (!Array.isArray(detail)) return [JSON.stringify(detail)];
  return detail.map((item) => {
    const where = (item.loc ?? []).filter((part) => part !== "body").join(".");
    return where ? `${where}: ${item.msg}` : item.msg;
  });
}

export class GenerateForm {
  constructor({ form, fields, errors, submitButton, onSubmitted, onUnauthorized }) {
    Object.assign(this, { form, fields, errors, submitButton, onSubmitted, onUnauthorized });
    this.models = new Map();
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    fields.model.addEventListener("change", () => this.applyModel());
    fields.prompt.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
    });
  }

  setModels(all) {
    // A prompt form can only offer the models a prompt alone is enough for (once each: not
    // an alias such as BFL's 2024 `image` route for flux-pro).
    const models = all.filter((model) => model.kind === "text-to-image" && !model.alias_of);
    this.models = new Map(models.map((model) => [model.name, model]));
    const select = this.fields.model;
    select.replaceChildren(...models.map((model) => option(model.name, model.name)));
    const preferred = remembered();
    if (preferred && this.models.has(preferred)) select.value = preferred;
    this.applyModel();
  }

  applyModel() {
    const model = this.models.get(this.fields.model.value);
    if (!model) return;
    remember(model.name);
    const { prompt, width, height, aspectRatio, dimensions, ratio } = this.fields;
    prompt.required = model.prompt_required;
    dimensions.hidden = model.size !== "dimensions";
    if (model.width) setBounds(width, model.width);
    if (model.height) setBounds(height, model.height);
    ratio.hidden = model.size !== "aspect_ratio";
    if (model.aspect_ratio) {
      const choices = model.aspect_ratio.choices.map((value) => option(value, value));
      if (model.aspect_ratio.optional) choices.unshift(option("", "Default"));
      aspectRatio.replaceChildren(...choices);
      aspectRatio.value = model.aspect_ratio.default ?? "";
    }
    this.showErrors([]);
  }

  body() {
    const model = this.models.get(this.fields.model.value);
    const { prompt, width, height, aspectRatio, seed } = this.fields;
    const body = {};
    if (prompt.value.trim()) body.prompt = prompt.value;
    if (model?.size === "dimensions") {
      if (width.value !== "") body.width = numberOrText(width.value);
      if (height.value !== "") body.height = numberOrText(height.value);
    }
    if (model?.size === "aspect_ratio" && aspectRatio.value) body.aspect_ratio = aspectRatio.value;
    if (seed.value !== "") body.seed = numberOrText(seed.value);
    return body;
  }

  async submit() {
    const name = this.fields.model.value;
    if (!name) return;
    // Some models would take an empty prompt and draw something random: almost always a slip.
    if (!this.fields.prompt.value.trim()) {
      const hint = { loc: ["body", "prompt"], msg: "write what the image should show" };
      this.showErrors([hint], "Nothing was sent:");
      this.fields.prompt.focus();
      return;
    }
    const body = this.body();
    this.submitButton.disabled = true;
    this.form.setAttribute("aria-busy", "true");
    try {
      const accepted = await request(modelPath(name), { method: "POST", body });
      this.showErrors([]);
      this.onSubmitted(accepted, name, body);
    } catch (error) {
      if (error instanceof ApiError && error.status === 403) this.onUnauthorized();
      this.showErrors(error instanceof ApiError ? error.detail : "Could not reach fluxhook. Try again.");
    } finally {
      this.submitButton.disabled = false;
      this.form.removeAttribute("aria-busy");
    }
  }

  // `detail` as the API sends it: FastAPI's list (fields get aria-invalid), or a string.
  showErrors(detail, title = "The job was not accepted:") {
    const items = Array.isArray(detail) ? detail : [];
    const invalid = new Set(items.map((item) => item.loc?.[1]).filter(Boolean));
    for (const input of this.form.querySelectorAll("input, select, textarea")) {
      if (invalid.has(input.name)) input.setAttribute("aria-invalid", "true");
      else input.removeAttribute("aria-invalid");
    }
    const lines = errorLines(detail);
    if (lines.length === 0) return this.errors.replaceChildren();
    const heading = document.createElement("p");
    heading.textContent = title;
    const list = document.createElement("ul");
    for (const line of lines) list.append(Object.assign(document.createElement("li"), { textContent: line }));
    this.errors.replaceChildren(heading, list);
  }
}
