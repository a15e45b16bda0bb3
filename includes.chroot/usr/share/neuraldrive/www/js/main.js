// The operator page: status (from /nd/status.json, see status.js), models (list, pull, delete,
// load/unload), a chat box and the benchmark.
import { HttpError, call, json, keys, stream } from "./api.js";
import { generateBody, parseAnswer, summarize } from "./bench.js";
import { bytes, gpuRows, instanceRows, row, summary } from "./status.js";

const $ = (id) => document.getElementById(id);

function say(text, kind = "error") {
  $("message").textContent = text;
  $("message").className = kind;
  $("message").hidden = !text;
}

function explain(error) {
  if (error instanceof HttpError && error.status === 401) {
    keys.forget();
    showKeyForm();
    return "The API key was refused (HTTP 401): enter the key `neuraldrive key show` prints on the appliance.";
  }
  return error.message;
}

function button(label, action) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", () => action().catch((e) => say(explain(e))));
  return b;
}

function showKeyForm() { $("main").hidden = true; $("key-form").hidden = false; }

async function loadStatus() {
  const dl = $("status");
  let s;
  try { s = await json("GET", "/nd/status.json"); } catch (e) {
    if (e instanceof HttpError && e.status === 404) { dl.textContent = "The appliance has not written its status yet (within a minute of boot)."; return; }
    throw e;
  }
  const items = summary(s);
  dl.replaceChildren(...items.flatMap(([k, v, cls]) => {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = k; dd.textContent = v; if (cls) dd.className = cls;
    return [dt, dd];
  }));
  $("gpus").replaceChildren(...gpuRows(s));
  $("gpu-table").hidden = !s.gpus.length;
  $("instances").replaceChildren(...instanceRows(s));
  $("instance-table").hidden = !(s.instances ?? []).length;
  $("as-of").textContent = `status as of ${new Date(s.time * 1000).toLocaleTimeString()}`;
  $("main").dataset.backend = s.gpu_backend;
  $("main").dataset.vramUsed = s.vram_used ?? "";
}

async function loadModels() {
  const [tags, ps] = await Promise.all([json("GET", "/api/tags"), json("GET", "/api/ps")]);
  const loaded = new Map(ps.models.map((m) => [m.name, m]));
  $("models").replaceChildren(...tags.models.map((m) => {
    const here = loaded.get(m.name);
    const toggle = here ? button("Unload", () => keepAlive(m.name, 0)) : button("Load", () => keepAlive(m.name, -1));
    const del = button("Delete", () => remove(m.name));
    const actions = document.createElement("span");
    actions.append(toggle, " ", del);
    return row([m.name, bytes(m.size), here ? `${bytes(here.size_vram)} VRAM` : "", actions]);
  }));
  for (const select of [$("chat-model"), $("bench-model")]) {
    const current = select.value;
    select.replaceChildren(...tags.models.map((m) => new Option(m.name, m.name)));
    if (current) select.value = current;
  }
}

async function keepAlive(model, seconds) {
  await json("POST", "/api/generate", { model, keep_alive: seconds, stream: false });
  await refresh();
}

async function remove(model) {
  try {
    await call("DELETE", "/api/delete", { model }, { admin: true });
  } catch (e) {
    if (e instanceof HttpError && e.status === 403) {
      $("admin-form").hidden = false;
      say(`Deleting ${model} needs the admin key (HTTP 403): enter it above (neuraldrive key show --admin), then press Delete again.`);
      return;
    }
    throw e;
  }
  say(`deleted ${model}`, "info");
  await refresh();
}

async function pull(model) {
  $("pull-progress").hidden = false;
  await stream("/api/pull", { model, stream: true }, (e) => {
    $("pull-status").textContent = e.status + (e.total ? ` ${bytes(e.completed ?? 0)} of ${bytes(e.total)}` : "");
    if (e.total) $("pull-progress").value = (e.completed ?? 0) / e.total;
  });
  $("pull-progress").value = 1;
  await refresh();
}

async function chat(model, text) {
  const out = $("chat-reply");
  out.textContent = "";
  let chunks = 0;
  await stream("/api/chat", { model, messages: [{ role: "user", content: text }], stream: true }, (e) => {
    if (e.message?.content) { out.textContent += e.message.content; chunks += 1; }
    out.dataset.chunks = chunks;
    if (e.done) out.dataset.done = "true";
  });
}

async function runBench(model, runs) {
  const show = await json("POST", "/api/show", { model });
  $("bench-info").textContent = `${model}: loading…`;
  await json("POST", "/api/generate", { model, keep_alive: -1, stream: false });
  const samples = [];
  for (let i = 1; i <= runs; i += 1) {
    $("bench-info").textContent = `${model}: run ${i} of ${runs}…`;
    samples.push(parseAnswer(await json("POST", "/api/generate", generateBody(model, i))));
  }
  await loadStatus().catch(() => {});
  const s = summarize(samples), d = show.details ?? {};
  const fmt = (v, scale, digits) => (v ? ["min", "median", "max"].map((k) => (v[k] * scale).toFixed(digits)) : ["n/a", "n/a", "n/a"]);
  $("bench-info").textContent = `${model} (${d.parameter_size ?? "?"}, ${d.quantization_level ?? "quantization unknown"}), `
    + `${runs} warm runs; GPU backend ${$("main").dataset.backend ?? "unknown"}, VRAM used ${bytes(Number($("main").dataset.vramUsed) || null)}`;
  $("bench-rows").replaceChildren(row(["first token (ms)", ...fmt(s.ttft_s, 1000, 0)]),
    row(["prompt (tokens/s)", ...fmt(s.prompt_tps, 1, 1)]), row(["generation (tokens/s)", ...fmt(s.gen_tps, 1, 1)]));
  $("bench-table").hidden = false;
}

async function refresh() {
  await Promise.all([loadStatus(), loadModels()]);
}

async function start() {
  if (!keys.api) { showKeyForm(); return; }
  try {
    await refresh();
    $("key-form").hidden = true;
    $("main").hidden = false;
    say("");
  } catch (e) { say(explain(e)); }
}

function onSubmit(id, action) {
  $(id).addEventListener("submit", (event) => {
    event.preventDefault();
    action().catch((e) => say(explain(e)));
  });
}

onSubmit("key-form", async () => { keys.setApi($("key").value); $("key").value = ""; await start(); });
onSubmit("admin-form", async () => { keys.setAdmin($("admin-key").value); $("admin-key").value = ""; $("admin-form").hidden = true; say("admin key kept for this tab", "info"); });
onSubmit("pull-form", () => pull($("pull-name").value.trim()));
onSubmit("chat-form", () => chat($("chat-model").value, $("chat-text").value));
onSubmit("bench-form", () => runBench($("bench-model").value, Number($("bench-runs").value) || 1));
$("forget").addEventListener("click", () => { keys.forget(); location.reload(); });
start();
setInterval(() => { if (keys.api && !$("main").hidden) loadStatus().catch(() => {}); }, 15000);
