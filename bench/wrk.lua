-- wrk script of bench/run.py.
--
-- BENCH_TARGETS names a file of lines "path<TAB>If-None-Match<TAB>Accept-Encoding"
-- (the last two fields may be empty: a browser sends "gzip, deflate, br", wrk
-- alone none); each request picks one line at random.  The requests
-- are formatted once per thread, so picking one costs a random number only.
-- When done, one line "BENCH_JSON {...}" gives the counts and the latency
-- percentiles (microseconds) for bench/run.py to parse.

local requests = {}

function init(args)
  local file = os.getenv("BENCH_TARGETS")
  for line in io.lines(file) do
    local path, etag, encoding = line:match("^([^\t]+)\t?([^\t]*)\t?(.*)$")
    if path then
      local headers = {}
      if etag ~= nil and etag ~= "" then
        headers["If-None-Match"] = etag
      end
      if encoding ~= nil and encoding ~= "" then
        headers["Accept-Encoding"] = encoding
      end
      requests[#requests + 1] = wrk.format("GET", path, headers)
    end
  end
  math.randomseed(os.time() + (tonumber(tostring(requests):match("0x(%x+)"), 16) or 0) % 100000)
end

function request()
  if #requests == 1 then
    return requests[1]
  end
  return requests[math.random(#requests)]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"mean": %.1f, "max": %d, "p50": %d, "p90": %d, "p99": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99)))
end
