-- wrk script: authenticated GETs of paths picked at random from a list (written by bench/run.py).
--   wrk -t2 -c32 -d10s --latency -s bench/get.lua http://127.0.0.1:PORT -- TOKEN_FILE PATHS_FILE
-- TOKEN_FILE holds the bearer token; PATHS_FILE one request path (with query) per line.
-- Every request is formatted once per thread in init(), so request() costs one random pick.

local threads = 0

function setup(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end

local function read_lines(path)
  local lines = {}
  local fh = assert(io.open(path, "r"))
  for line in fh:lines() do
    if line ~= "" then
      lines[#lines + 1] = line
    end
  end
  fh:close()
  return lines
end

local requests = {}
local count = 0

function init(args)
  local token = assert(read_lines(args[1])[1], "empty token file")
  local headers = { ["Authorization"] = "Bearer " .. token, ["Accept"] = "application/fhir+json" }
  for _, path in ipairs(read_lines(args[2])) do
    count = count + 1
    requests[count] = wrk.format("GET", path, headers)
  end
  assert(count > 0, "no request paths")
  math.randomseed(os.time() * 64 + (thread_id or 0))
end

function request()
  return requests[math.random(count)]
end
