-- wrk script of the soak (benchmarks/soak.py): one traffic class per wrk process.
-- SOAK_DIR holds the request bodies, SOAK_CLASS names the class, SOAK_DELAY_MS paces each
-- connection (wrk waits this long after an answer before the next request).
local dir = os.getenv("SOAK_DIR")
local class = os.getenv("SOAK_CLASS")
local delay_ms = tonumber(os.getenv("SOAK_DELAY_MS") or "0")
local form = { ["Content-Type"] = "multipart/form-data; boundary=soakboundary" }
local threads = {}
local requests = {}
local next_request = 0
counts = {}

local function read(name)
  local handle = assert(io.open(dir .. "/" .. name, "rb"))
  local data = handle:read("*a")
  handle:close()
  return data
end

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  if class == "single" then
    requests = { wrk.format("POST", "/predict", form, read("single.body")) }
  elseif class == "batch" then
    requests = { wrk.format("POST", "/predict/batch", form, read("batch.body")) }
  else
    -- Bad or hostile: a file that is no image, a body that is no form, a header line over the
    -- proxy's cap, the internal metrics, an unknown path.
    requests = {
      wrk.format("POST", "/predict", form, read("bad.body")),
      wrk.format("POST", "/predict", { ["Content-Type"] = "text/plain" }, "not a form"),
      wrk.format("GET", "/health", { ["X-Big"] = string.rep("a", 20000) }),
      wrk.format("GET", "/metrics"),
      wrk.format("GET", "/admin/../../etc/passwd"),
    }
  end
end

function request()
  next_request = next_request % #requests + 1
  return requests[next_request]
end

function delay()
  return delay_ms
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests_stats)
  local statuses = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("counts")) do
      statuses[status] = (statuses[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(statuses) do
    table.insert(parts, string.format('"%d": %d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    'SOAK-RESULT {"requests": %d, "duration_us": %d, "p50_ms": %.3f, "p99_ms": %.3f, ' ..
    '"max_ms": %.3f, "errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, ' ..
    '"statuses": {%s}}\n',
    summary.requests, summary.duration, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, e.connect, e.read, e.write, e.timeout,
    table.concat(parts, ", ")))
end
