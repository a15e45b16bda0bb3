// The appliance's status as the page shows it: /nd/status.json, the shape docs/appliance.md
// ("The status") documents, written by neuraldrive-status.service from the status function.
const GiB = 2 ** 30;

export const bytes = (n) => (n === null || n === undefined ? "unknown" : n >= GiB ? `${(n / GiB).toFixed(1)} GiB`
  : `${(n / 2 ** 20).toFixed(1)} MiB`);

export function row(cells, attrs = {}) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.append(cell); else td.textContent = cell;
    tr.append(td);
  }
  Object.assign(tr.dataset, attrs.data ?? {});
  if (attrs.className) tr.className = attrs.className;
  return tr;
}

const model = (m) => `${m.name} (${bytes(m.size)}, ${Math.round(m.vram_share * 100)}% in VRAM, `
  + `${m.expires_at ? `until ${new Date(m.expires_at).toLocaleString()}` : "kept loaded"})`;

const uptime = (t) => (t === null ? "unknown"
  : `${Math.floor(t / 86400)} d ${Math.floor(t / 3600) % 24} h ${Math.floor(t / 60) % 60} min`);

// [label, text, class] for the summary list.
export function summary(s) {
  return [
    ...(s.version ? [["Image", `NeuralDrive ${s.version}`]] : []), // os-release IMAGE_VERSION, where the status has it
    ["Engine", s.engine_state === "running" ? `running, Ollama ${s.engine_version}` : `${s.engine_state}: ${s.engine_error}`, s.engine_state],
    ["GPU", `${s.gpu_summary}; VRAM used ${bytes(s.vram_used)}`],
    ...s.loaded.map((m) => ["Loaded", model(m)]),
    ["Health", [s.health, ...s.health_findings.filter((f) => !f.startsWith("ok"))].join("; "), s.health],
    ["Uptime", uptime(s.uptime_s)],
    ["Disk left", `${bytes(s.disk_free)} of ${bytes(s.disk_total)} (${s.disk_path})`],
  ];
}

// One row per GPU: VRAM used of total, the share in use where both are known.
export function gpuRows(s) {
  return s.gpus.map((g) => {
    const pct = g.vram_used !== null && g.vram_total ? ` (${Math.round((100 * g.vram_used) / g.vram_total)}%)` : "";
    return row([`${g.index}`, g.slot, g.name, `${bytes(g.vram_used)}${pct}`, bytes(g.vram_total)],
      { data: { slot: g.slot } });
  });
}

// One row per engine instance (ollama.instances[], routed at /i/NAME/).
export function instanceRows(s) {
  return (s.instances ?? []).map((i) => {
    const e = i.engine;
    const loaded = e.state === "running" ? e.loaded.map(model).join("; ") || "no model loaded" : `${e.state}: ${e.error}`;
    return row([i.name, `/i/${i.name}/`, `${i.health} (unit ${i.unit_state})`, loaded],
      { data: { name: i.name, health: i.health }, className: i.health });
  });
}
