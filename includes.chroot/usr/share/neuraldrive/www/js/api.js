// Talking to the gateway: every call carries the key as a Bearer header; keys live in sessionStorage only.
const KEY = "neuraldrive-key", ADMIN = "neuraldrive-admin-key";

export const keys = {
  get api() { return sessionStorage.getItem(KEY); },
  get admin() { return sessionStorage.getItem(ADMIN); },
  setApi(value) { sessionStorage.setItem(KEY, value.trim()); },
  setAdmin(value) { sessionStorage.setItem(ADMIN, value.trim()); },
  forget() { sessionStorage.removeItem(KEY); sessionStorage.removeItem(ADMIN); },
};

export class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

export async function call(method, path, body, { admin = false } = {}) {
  const key = admin && keys.admin ? keys.admin : keys.api;
  const response = await fetch(path, {
    method, headers: { Authorization: `Bearer ${key}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined, cache: "no-store",
  });
  if (!response.ok) {
    const text = (await response.text()).trim();
    let reason = text;
    try { reason = JSON.parse(text).error ?? text; } catch { /* not JSON: the text itself */ }
    throw new HttpError(response.status, `${method} ${path}: HTTP ${response.status} ${reason}`.trim());
  }
  return response;
}

export async function json(method, path, body, options) {
  const text = await (await call(method, path, body, options)).text();
  return text.trim() ? JSON.parse(text) : {};
}

// Ollama streams NDJSON: one JSON object a line; onEvent gets each as it arrives.
export async function stream(path, body, onEvent) {
  const reader = (await call("POST", path, body)).body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { done, value } = await reader.read();
    buffer += decoder.decode(value ?? new Uint8Array(), { stream: !done });
    const lines = buffer.split("\n");
    buffer = lines.pop();
    for (const line of lines.filter((l) => l.trim())) {
      const event = JSON.parse(line);
      if (event.error) throw new HttpError(500, event.error);
      onEvent(event);
    }
    if (done) return;
  }
}
