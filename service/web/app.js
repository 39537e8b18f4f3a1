// The page: key handling, loading models and recent jobs, and the one live event stream.

import { ApiError, authHeaders, keyStore, request } from "./api.js";
import { GenerateForm } from "./form.js";
import { JobBoard } from "./jobs.js";
import { EventStream } from "./sse.js";

const JOB_EVENTS = new Set(["job.submitted", "job.progress", "job.ready", "job.failed", "job.moderated"]);
const RECENT_JOBS = 50;

const $ = (id) => document.getElementById(id);

const board = new JobBoard({
  list: $("jobs"),
  more: $("jobs-more"),
  listEmpty: $("jobs-empty"),
  gallery: $("gallery"),
  galleryEmpty: $("gallery-empty"),
  jobTemplate: $("job-template"),
  imageTemplate: $("image-template"),
  announce: (text) => {
    $("announcer").textContent = text;
  },
});

const form = new GenerateForm({
  form: $("generate-form"),
  fields: {
    prompt: $("prompt"),
    model: $("model"),
    width: $("width"),
    height: $("height"),
    aspectRatio: $("aspect-ratio"),
    seed: $("seed"),
    dimensions: $("dimensions"),
    ratio: $("ratio"),
  },
  errors: $("form-errors"),
  submitButton: $("submit"),
  // Shown at once as Queued; the stream's events take it from there.
  onSubmitted: (accepted, model, inputs) => {
    const createdAt = new Date().toISOString();
    board.upsert({ id: accepted.id, model, inputs, status: "Queued", progress: null, created_at: createdAt });
  },
  onUnauthorized: () => askForKey("The key was not accepted. Paste a valid key."),
});

let stream = null;

function setConnection(state, text) {
  const node = $("connection");
  node.dataset.state = state;
  node.textContent = text;
}

function onStreamState({ state, delayMs }) {
  if (state === "connecting") setConnection("connecting", "Connecting…");
  else if (state === "open") setConnection("live", "Live");
  else if (state === "waiting") setConnection("waiting", `Reconnecting in ${Math.ceil(delayMs / 1000)} s`);
  else if (state === "unauthorized") askForKey("The key was not accepted. Paste a valid key.");
}

function onStreamEvent(message) {
  if (!JOB_EVENTS.has(message.event)) return;
  try {
    board.upsert(JSON.parse(message.data).data);
  } catch (error) {
    console.warn("unreadable event", message, error);
  }
}

// `owner`: the stream that asked; if the key changed meanwhile, the answer is another tenant's.
async function loadRecentJobs(owner) {
  try {
    const page = await request(`/v1/jobs?limit=${RECENT_JOBS}`);
    if (owner === stream) page.jobs.forEach((job) => board.upsert(job));
  } catch (error) {
    console.warn("could not load recent jobs", error);
  }
}

async function loadModels() {
  try {
    form.setModels((await request("/v1/models")).models);
  } catch (error) {
    const detail = error instanceof ApiError ? error.detail : "fluxhook could not be reached.";
    form.showErrors(detail, "Could not load the model list:");
  }
}

function startStream() {
  const current = new EventStream({
    url: "/v1/events",
    headers: () => authHeaders(),
    onEvent: onStreamEvent,
    onState: onStreamState,
    // Without a Last-Event-ID the stream starts from now: the list fills in what came before.
    // Loading it only once the stream is subscribed leaves no gap between the two.
    onOpen: ({ resumed }) => resumed || loadRecentJobs(current),
  });
  stream = current;
  stream.start();
}

function stopStream() {
  stream?.stop();
  stream = null;
  setConnection("off", "Not connected");
}

function showWorkspace() {
  const key = keyStore.get();
  $("key-panel").hidden = true;
  $("workspace").hidden = false;
  $("key-status").hidden = false;
  $("key-hint").textContent = `…${key.slice(-4)}`;
}

function askForKey(message = "") {
  stopStream();
  const hasKey = Boolean(keyStore.get());
  $("workspace").hidden = true;
  $("key-status").hidden = true;
  $("key-panel").hidden = false;
  $("cancel-key").hidden = !hasKey || Boolean(message);
  $("key-error").textContent = message;
  $("key-input").value = "";
  $("key-input").focus();
}

function start() {
  board.clear();
  showWorkspace();
  loadModels();
  startStream();
}

async function saveKey(event) {
  event.preventDefault();
  const key = $("key-input").value.trim();
  if (!key) {
    $("key-error").textContent = "Paste a key first.";
    return;
  }
  try {
    await request("/v1/models", { key });
  } catch (error) {
    const rejected = error instanceof ApiError && error.status === 403;
    const reason = rejected ? "That key was not accepted." : "Could not reach fluxhook. Try again.";
    $("key-error").textContent = reason;
    return;
  }
  keyStore.set(key);
  start();
  $("prompt").focus();
}

$("key-form").addEventListener("submit", saveKey);
$("change-key").addEventListener("click", () => askForKey());
$("cancel-key").addEventListener("click", start);
$("forget-key").addEventListener("click", () => {
  keyStore.forget();
  board.clear();
  askForKey();
});

if (keyStore.get()) start();
else askForKey();
