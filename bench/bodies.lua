-- wrk script: authenticated POSTs of prepared bodies, each sent once (bench/run.py writes them).
--   wrk -t2 -c32 -d10s --latency -s bench/bodies.lua http://127.0.0.1:PORT -- TOKEN PATH BODIES THREADS
-- TOKEN is a file holding the bearer token, PATH the request path (e.g. /fhir/Contract). BODIES has one JSON
-- body per line: thread t (0-based) of THREADS sends the (t+1)th, then every THREADS-th after it, so no body is
-- sent twice (e.g. each Contract enrols a different family). Past the end of the list the last one is
-- repeated: those requests fail (409) and show as non-2xx (bench/run.py sizes the list to avoid that).

local threads = 0

function setup(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end

local headers, path, stride, next_body
local bodies = {}

function init(args)
  local fh = assert(io.open(args[1], "r"))
  local token = assert(fh:read("*l"), "empty token file")
  fh:close()
  path = assert(args[2], "PATH missing")
  fh = assert(io.open(args[3], "r"))
  for line in fh:lines() do
    if line ~= "" then
      bodies[#bodies + 1] = line
    end
  end
  fh:close()
  stride = assert(tonumber(args[4]), "THREADS missing")
  next_body = (thread_id or 0) + 1
  assert(next_body <= #bodies, "not enough bodies")
  headers = {
    ["Authorization"] = "Bearer " .. token,
    ["Accept"] = "application/fhir+json",
    ["Content-Type"] = "application/fhir+json",
  }
end

function request()
  local body = bodies[next_body]
  if next_body + stride <= #bodies then
    next_body = next_body + stride
  end
  return wrk.format("POST", path, headers, body)
end
