-- wrk script: POST one signed orders/create body, each request with its own webhook id.
-- Only the body is signed (X-Shopify-Hmac-Sha256), so one HMAC computed ahead serves every
-- request while X-Shopify-Webhook-Id stays unique and every request is claimed and queued.
-- Environment: KIZUNA_BENCH_BODY (file holding the body), KIZUNA_BENCH_HMAC, KIZUNA_BENCH_SHOP,
-- KIZUNA_BENCH_RUN (a nonce for the ids), KIZUNA_BENCH_DELAY_MS (mean pause per connection
-- between requests, 0 = as fast as possible; exponential, so arrivals are not in lock-step).

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  local f = assert(io.open(os.getenv("KIZUNA_BENCH_BODY"), "rb"))
  body = f:read("*a")
  f:close()
  run = os.getenv("KIZUNA_BENCH_RUN") or "run"
  mean_delay = tonumber(os.getenv("KIZUNA_BENCH_DELAY_MS") or "0")
  counter = 0
  headers = {
    ["Content-Type"] = "application/json",
    ["X-Shopify-Topic"] = "orders/create",
    ["X-Shopify-Hmac-Sha256"] = os.getenv("KIZUNA_BENCH_HMAC") or "",
    ["X-Shopify-Shop-Domain"] = os.getenv("KIZUNA_BENCH_SHOP") or "",
    ["X-Shopify-API-Version"] = "2026-07",
  }
  math.randomseed(tid * 7919)
end

function request()
  counter = counter + 1
  headers["X-Shopify-Webhook-Id"] = run .. "-" .. tid .. "-" .. counter
  return wrk.format("POST", nil, headers, body)
end

function delay()
  if mean_delay <= 0 then return 0 end
  return math.floor(-math.log(1 - math.random()) * mean_delay)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d status=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect, e.read, e.write, e.timeout))
end
