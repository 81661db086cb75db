-- wrk script: POST a small non-streamed chat completion (set STREAM=1 in the environment for a stream)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench"
local stream = os.getenv("STREAM") == "1"
wrk.body = '{"model":"m","messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":32'
  .. (stream and ',"stream":true}' or '}')

done = function(summary, latency, requests)
  io.write(string.format("JSON {\"requests\":%d,\"duration_us\":%d,\"errors\":%d,\"non2xx\":%d," ..
    "\"p50_us\":%d,\"p90_us\":%d,\"p99_us\":%d,\"mean_us\":%.1f}\n",
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
