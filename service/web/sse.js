// Server-Sent Events over fetch(). EventSource cannot send the x-key header, so the page reads
// the text/event-stream body itself, parses it as the HTML standard says, and reconnects with
// Last-Event-ID and backoff when the stream drops.

const BASE_DELAY_MS = 1000;
const MAX_DELAY_MS = 30000;
// The server sends a comment every 15 s; three missed heartbeats mean the stream is dead.
const SILENCE_LIMIT_MS = 45000;

// Incremental parser: feed() it decoded text in any chunking; it calls onMessage for each event,
// onComment for each comment line (the server's heartbeats), and onId for a message with an id
// and no data (the spec sets the last event id without firing an event: the server's start id).
export class SSEParser {
  constructor({ onMessage, onComment = () => {}, onId = () => {} }) {
    this.onMessage = onMessage;
    this.onComment = onComment;
    this.onId = onId;
    this.pending = "";
    this.data = [];
    this.type = "";
    this.idBuffer = null;
    this.lastEventId = null;
    this.retry = null;
  }

  feed(text) {
    let chunk = this.pending + text;
    // A chunk ending in CR may be half of a CRLF: keep the CR until the next chunk decides.
    const held = chunk.endsWith("\r") ? "\r" : "";
    if (held) chunk = chunk.slice(0, -1);
    const lines = chunk.split(/\r\n|\r|\n/);
    this.pending = lines.pop() + held;
    for (const line of lines) this.line(line);
  }

  line(line) {
    if (line === "") return this.dispatch();
    if (line.startsWith(":")) return this.onComment(line.slice(1).trim());
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.type = value;
    else if (field === "id" && !value.includes("\0")) this.idBuffer = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
  }

  dispatch() {
    if (this.idBuffer !== null) this.lastEventId = this.idBuffer;
    const message = { id: this.lastEventId, event: this.type || "message", data: this.data.join("\n") };
    const hasData = this.data.length > 0;
    this.data = [];
    this.type = "";
    if (hasData) this.onMessage(message);
    else if (this.idBuffer !== null) this.onId(this.lastEventId);
    this.idBuffer = null;
  }
}

export function backoffDelay(failures, baseMs = BASE_DELAY_MS) {
  const ceiling = Math.min(MAX_DELAY_MS, baseMs * 2 ** Math.max(0, failures - 1));
  return Math.round(ceiling * (0.5 + Math.random() / 2)); // jitter: clients do not reconnect in step
}

// One long-lived stream. `headers()` is asked on every connect (the key may have changed).
// onState receives {state: "connecting"|"open"|"waiting"|"unauthorized", delayMs?}.
// onOpen receives {resumed}: false means events may have been missed and state should be reloaded.
export class EventStream {
  constructor({ url, headers, onEvent, onState = () => {}, onOpen = () => {} }) {
    Object.assign(this, { url, headers, onEvent, onState, onOpen });
    this.lastEventId = null;
    this.retryMs = BASE_DELAY_MS;
    this.stopped = true;
    this.controller = null;
    this.wakeTimer = null;
    this.wake = null;
  }

  // One-shot: a stopped stream stays stopped (make a new one for a new key).
  start() {
    this.stopped = false;
    this.run();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.wakeTimer);
    this.wake?.();
    this.controller?.abort();
  }

  async run() {
    let failures = 0;
    while (!this.stopped) {
      const outcome = await this.connect();
      if (this.stopped) return;
      if (outcome === "unauthorized") return this.onState({ state: "unauthorized" });
      failures = outcome === "opened" ? 1 : failures + 1;
      const delayMs = backoffDelay(failures, this.retryMs);
      this.onState({ state: "waiting", delayMs });
      await new Promise((resolve) => {
        this.wake = resolve;
        this.wakeTimer = setTimeout(resolve, delayMs);
      });
    }
  }

  // Resolves "opened" if the stream was open when it ended, "unauthorized" on 401/403,
  // otherwise "failed".
  async connect() {
    const controller = new AbortController();
    this.controller = controller;
    this.onState({ state: "connecting" });
    const resumed = this.lastEventId !== null;
    const headers = { ...this.headers(), accept: "text/event-stream" };
    if (resumed) headers["last-event-id"] = this.lastEventId;
    let opened = false;
    try {
      const response = await fetch(this.url, { headers, signal: controller.signal, cache: "no-store" });
      if (response.status === 401 || response.status === 403) return "unauthorized";
      if (response.status === 422 && resumed) this.lastEventId = null; // an id we cannot resume from
      if (!response.ok || !response.body) return "failed";
      const parser = new SSEParser({
        onMessage: (message) => {
          this.lastEventId = message.id || null; // an empty id resets it
          this.onEvent(message);
        },
        onId: (id) => {
          this.lastEventId = id || null; // where a fresh stream starts: resume from there
        },
        onComment: () => {
          // The server's first comment (": connected") comes once it is subscribed.
          if (opened) return;
          opened = true;
          this.onState({ state: "open" });
          this.onOpen({ resumed });
        },
      });
      await this.read(response.body, parser, controller);
      if (parser.retry !== null) this.retryMs = parser.retry;
    } catch (error) {
      if (error.name !== "AbortError") console.warn("event stream:", error);
    } finally {
      controller.abort();
    }
    return opened ? "opened" : "failed";
  }

  async read(body, parser, controller) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let silence = setTimeout(() => controller.abort(), SILENCE_LIMIT_MS);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        clearTimeout(silence);
        silence = setTimeout(() => controller.abort(), SILENCE_LIMIT_MS);
        parser.feed(value);
      }
    } finally {
      clearTimeout(silence);
    }
  }
}
