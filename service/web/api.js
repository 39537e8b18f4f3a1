// The fluxhook API as the page uses it: the key (kept in localStorage) and JSON requests.

const KEY_ITEM = "fluxhook.key";
let memoryKey = null; // when storage is unavailable (some private modes), for this tab only

export const keyStore = {
  get() {
    try {
      return localStorage.getItem(KEY_ITEM) ?? memoryKey;
    } catch {
      return memoryKey;
    }
  },
  set(key) {
    memoryKey = key;
    try {
      localStorage.setItem(KEY_ITEM, key);
    } catch {
      // kept in memory only
    }
  },
  forget() {
    memoryKey = null;
    try {
      localStorage.removeItem(KEY_ITEM);
    } catch {
      // nothing stored
    }
  },
};

export function authHeaders(key = keyStore.get()) {
  return key ? { "x-key": key } : {};
}

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

// JSON in and out; a non-2xx answer throws ApiError carrying the server's `detail`.
export async function request(path, { method = "GET", body, key } = {}) {
  const headers = { accept: "application/json", ...authHeaders(key) };
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, data?.detail ?? response.statusText);
  return data;
}

// A model name may contain "/" (flux-tools/erase-v1): encode each segment, keep the slashes.
export function modelPath(name) {
  return "/v1/" + name.split("/").map(encodeURIComponent).join("/");
}
