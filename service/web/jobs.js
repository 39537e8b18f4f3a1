// The live job list and the gallery. Every job view (from GET /v1/jobs, a submit, or an event)
// goes through upsert(), which keeps the most advanced state of each job: events replayed after
// a reconnect or a list fetched after the stream opened never move a job backwards.
// Text goes in with textContent and URLs through safeUrl(): nothing from the API is parsed as HTML.

const IN_FLIGHT_RANK = { Queued: 0, Pending: 1, Processing: 2 };
const TERMINAL_RANK = 3;
const FAILED = new Set(["Error", "Request Moderated", "Content Moderated"]);
// Rows shown at first and added by each "Show more": a long session's list stays short.
export const JOBS_PAGE = 20;

function rank(job) {
  return IN_FLIGHT_RANK[job.status] ?? TERMINAL_RANK;
}

function isNewer(incoming, current) {
  if (!current) return true;
  if (rank(incoming) !== rank(current)) return rank(incoming) > rank(current);
  if (rank(current) === TERMINAL_RANK) return false; // terminal states never change
  return (incoming.progress ?? 0) >= (current.progress ?? 0);
}

export function safeUrl(value) {
  try {
    const url = new URL(value, location.href);
    return url.protocol === "https:" || url.protocol === "http:" ? url.href : null;
  } catch {
    return null;
  }
}

// BFL's details: {"error": "..."}, {"Moderation Reasons": [...]}, or anything else JSON.
export function describeDetails(details) {
  if (details === null || details === undefined) return "";
  if (typeof details !== "object") return String(details);
  const entries = Object.entries(details);
  if (entries.length === 1 && entries[0][0] === "error") return String(entries[0][1]);
  return entries.map(([key, value]) => `${key}: ${describeValue(value)}`).join("; ");
}

function describeValue(value) {
  if (Array.isArray(value)) return value.join(", ");
  return value !== null && typeof value === "object" ? JSON.stringify(value) : String(value);
}

function promptOf(job) {
  return job.inputs?.prompt || "";
}

function created(job) {
  return Date.parse(job.created_at) || 0;
}

// Newest first: before the first sibling that is older.
function place(list, node, job) {
  const older = [...list.children].find((child) => Number(child.dataset.created) < created(job));
  node.dataset.created = String(created(job));
  list.insertBefore(node, older ?? null);
}

export class JobBoard {
  // `announce(text)` tells assistive technology when a job it saw in flight finishes.
  constructor({ list, more, listEmpty, gallery, galleryEmpty, jobTemplate, imageTemplate, announce }) {
    Object.assign(this, { list, more, listEmpty, gallery, galleryEmpty, jobTemplate, imageTemplate, announce });
    this.jobs = new Map();
    this.rows = new Map();
    this.images = new Map();
    this.visible = JOBS_PAGE;
    more.addEventListener("click", () => {
      this.visible += JOBS_PAGE;
      this.applyCap();
    });
  }

  clear() {
    this.jobs.clear();
    this.rows.clear();
    this.images.clear();
    this.list.replaceChildren();
    this.gallery.replaceChildren();
    this.visible = JOBS_PAGE;
    this.updateEmpty();
  }

  // The newest `visible` rows show; older ones wait behind "Show more".
  applyCap() {
    const rows = [...this.list.children];
    rows.forEach((row, index) => {
      row.hidden = index >= this.visible;
    });
    const older = rows.length - this.visible;
    this.more.hidden = older <= 0;
    this.more.textContent = `Show more (${older} older)`;
  }

  upsert(job) {
    const previous = this.jobs.get(job?.id);
    if (!job?.id || !isNewer(job, previous)) return;
    this.jobs.set(job.id, job);
    if (previous && rank(previous) < TERMINAL_RANK && rank(job) === TERMINAL_RANK) {
      this.announce(`${job.status}: ${promptOf(job) || job.model}`);
    }
    let row = this.rows.get(job.id);
    if (!row) {
      row = this.jobTemplate.content.firstElementChild.cloneNode(true);
      row.dataset.jobId = job.id;
      this.rows.set(job.id, row);
      place(this.list, row, job);
    }
    this.renderRow(row, job);
    if (job.status === "Ready" && job.result?.sample) this.showImage(job);
    this.updateEmpty();
  }

  renderRow(row, job) {
    const failed = FAILED.has(job.status);
    row.dataset.status = job.status;
    row.querySelector(".badge").textContent = job.status;
    row.querySelector(".job-model").textContent = job.model;
    const time = row.querySelector(".job-time");
    time.dateTime = job.created_at;
    time.textContent = new Date(job.created_at).toLocaleTimeString();
    const prompt = row.querySelector(".job-prompt");
    prompt.textContent = promptOf(job) || "(no prompt)";
    this.renderProgress(row.querySelector(".job-progress"), job);
    const reason = row.querySelector(".job-reason");
    reason.textContent = failed ? describeDetails(job.details) || "No reason given" : "";
    reason.hidden = !failed;
  }

  renderProgress(bar, job) {
    bar.hidden = rank(job) === TERMINAL_RANK;
    if (typeof job.progress === "number") {
      bar.value = job.progress;
      bar.setAttribute("aria-label", `${job.status}, ${Math.round(job.progress * 100)}%`);
    } else {
      bar.removeAttribute("value"); // indeterminate
      bar.setAttribute("aria-label", job.status);
    }
  }

  showImage(job) {
    const src = safeUrl(job.result.sample);
    if (!src || this.images.has(job.id)) return;
    const item = this.imageTemplate.content.firstElementChild.cloneNode(true);
    item.dataset.jobId = job.id;
    const prompt = promptOf(job);
    const image = item.querySelector("img");
    image.src = src;
    image.alt = prompt || `Image generated by ${job.model}`;
    const link = item.querySelector("a");
    link.href = src;
    link.setAttribute("aria-label", `Open full size: ${image.alt}`);
    item.querySelector("figcaption").textContent = `${job.model}${prompt ? ` · ${prompt}` : ""}`;
    this.images.set(job.id, item);
    place(this.gallery, item, job);
  }

  updateEmpty() {
    this.applyCap();
    this.listEmpty.hidden = this.rows.size > 0;
    this.galleryEmpty.hidden = this.images.size > 0;
  }
}
