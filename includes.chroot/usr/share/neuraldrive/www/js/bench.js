// The benchmark's math, the same as neuraldrive/bench.py (tests/unit/test_bench.py holds them together):
// from a final /api/generate answer's counters (nanoseconds),
//   time to first token = load_duration + prompt_eval_duration
//   prompt tokens/s = prompt_eval_count / prompt_eval_duration, generation = eval_count / eval_duration.
export const PROMPT = "Explain the difference between TCP and UDP in networking, in three sentences.";
export const NUM_PREDICT = 128;
const NS = 1e9;

function count(answer, key) {
  const value = answer[key] ?? 0;
  if (typeof value !== "number" || !(value >= 0)) throw new Error(`the engine's ${key} is not a count: ${value}`);
  return Math.trunc(value);
}

const rate = (tokens, ns) => (tokens && ns ? tokens / (ns / NS) : null);

export function parseAnswer(answer) {
  if (answer.done !== true) throw new Error("the engine's answer is not a final one (done is not true)");
  const promptN = count(answer, "prompt_eval_count"), promptNs = count(answer, "prompt_eval_duration");
  const genN = count(answer, "eval_count"), genNs = count(answer, "eval_duration");
  return { ttft_s: (count(answer, "load_duration") + promptNs) / NS, prompt_tokens: promptN,
           prompt_tps: rate(promptN, promptNs), gen_tokens: genN, gen_tps: rate(genN, genNs) };
}

export function spread(values) {
  const known = values.filter((v) => v !== null).sort((a, b) => a - b);
  if (!known.length) return null;
  const mid = Math.floor(known.length / 2);
  const median = known.length % 2 ? known[mid] : (known[mid - 1] + known[mid]) / 2;
  return { min: known[0], median, max: known[known.length - 1] };
}

export function summarize(samples) {
  return { ttft_s: spread(samples.map((s) => s.ttft_s)), prompt_tps: spread(samples.map((s) => s.prompt_tps)),
           gen_tps: spread(samples.map((s) => s.gen_tps)) };
}

export const runPrompt = (index) => `[run ${index}] ${PROMPT}`;

export function generateBody(model, index, numPredict = NUM_PREDICT) {
  return { model, prompt: runPrompt(index), stream: false, keep_alive: -1,
           options: { num_predict: numPredict, temperature: 0, seed: 42 } };
}
