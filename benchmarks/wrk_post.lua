-- wrk script: POST prepared multipart bodies in turn (benchmarks/bench_capacity.py writes them).
-- Arguments after `--`: <folder of 0.bin..N-1.bin> <N> <path> <boundary>
-- `done` prints one JSON line: requests, seconds, errors and latency percentiles (ms).
local requests = {}
local index = 0

function init(args)
  local folder, count, path, boundary = args[1], tonumber(args[2]), args[3], args[4]
  local headers = { ["Content-Type"] = "multipart/form-data; boundary=" .. boundary }
  for i = 0, count - 1 do
    local file = assert(io.open(folder .. "/" .. i .. ".bin", "rb"))
    local body = file:read("*a")
    file:close()
    requests[#requests + 1] = wrk.format("POST", path, headers, body)
  end
  index = math.random(#requests)
end

function request()
  index = index % #requests + 1
  return requests[index]
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "seconds": %.6f, "connect_errors": %d, "read_errors": %d, '
      .. '"write_errors": %d, "status_errors": %d, "timeouts": %d, "p50_ms": %.3f, '
      .. '"p90_ms": %.3f, "p99_ms": %.3f}\n',
    summary.requests, summary.duration / 1e6, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000))
end
