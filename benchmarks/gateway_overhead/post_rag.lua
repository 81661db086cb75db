-- wrk script: non-streamed chat completions with ~2k-token prompts (1500 words), half of them never seen before.
-- Even requests reuse one of 8 documents (after its first sight: tokenizer cache and prefix index hits); odd ones
-- carry a document made for that request (a cold tokenization and a prefix-index miss). Seeded: SEED env var.
local words = {"model", "cache", "token", "block", "prefix", "replica", "gateway", "request", "answer", "question",
  "document", "section", "table", "figure", "result", "method", "data", "system", "user", "assistant", "river",
  "mountain", "city", "garden", "market", "library", "engine", "server", "network", "memory", "latency",
  "throughput", "batch", "schedule", "queue", "window", "policy", "profile", "metric", "signal", "worker"}
local doc_words = 1500
local shared = {}
local counter = 0
local thread_id = 0

local function document(n)
  local parts = {}
  for i = 1, doc_words do parts[i] = words[math.random(#words)] end
  return "Document " .. n .. ". " .. table.concat(parts, " ")
end

function setup(thread)
  thread:set("thread_id", thread_id)
  thread_id = thread_id + 1
end

function init(args)
  math.randomseed(tonumber(os.getenv("SEED") or "0") * 1000 + (thread_id or 0))
  for d = 1, 8 do shared[d] = document("shared-" .. d) end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer bench"
end

function request()
  counter = counter + 1
  local doc
  if counter % 2 == 0 then doc = shared[(counter / 2) % 8 + 1] else doc = document("new-" .. thread_id .. "-" .. counter) end
  local body = '{"model":"m","max_tokens":32,"messages":[{"role":"system","content":"' .. doc ..
    '"},{"role":"user","content":"Question ' .. counter .. ': what does it say?"}]}'
  return wrk.format(nil, nil, nil, body)
end

done = function(summary, latency, requests)
  io.write(string.format("JSON {\"requests\":%d,\"duration_us\":%d,\"errors\":%d,\"non2xx\":%d," ..
    "\"p50_us\":%d,\"p90_us\":%d,\"p99_us\":%d,\"mean_us\":%.1f}\n",
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
