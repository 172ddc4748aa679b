-- wrk script: authenticated POST /fhir/CoverageEligibilityRequest for insured insurees (the shape of
-- tests/builders_eligibility.py enquiry(): one item and one service line).
--   wrk -t2 -c32 -d10s --latency -s bench/eligibility.lua http://127.0.0.1:PORT -- TOKEN TEMPLATE SAMPLES
-- TOKEN is a file holding the bearer token. TEMPLATE (written by bench/run.py) holds the request body as a
-- string.format pattern on one line, its four %s being, in order: the request's identifier UUID, the Patient
-- id, the item code and the service code. SAMPLES has one "patient-id<TAB>item-code<TAB>service-code" line per
-- insured insuree, the codes being covered by the insuree's product. Each request picks a sample at random and
-- gets a UUID of its own (start time, thread, counter: the server refuses a UUID it has seen).

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

local template, headers, prefix
local patients, items, services = {}, {}, {}
local count, sent = 0, 0

function init(args)
  local token = assert(read_lines(args[1])[1], "empty token file")
  template = assert(read_lines(args[2])[1], "empty template file")
  for _, line in ipairs(read_lines(args[3])) do
    local patient, item, service = line:match("^([^\t]+)\t([^\t]+)\t([^\t]+)$")
    if patient then
      count = count + 1
      patients[count], items[count], services[count] = patient, item, service
    end
  end
  assert(count > 0, "no eligibility samples")
  headers = {
    ["Authorization"] = "Bearer " .. token,
    ["Accept"] = "application/fhir+json",
    ["Content-Type"] = "application/fhir+json",
  }
  prefix = string.format("%08x", os.time() % 2147483648)
  math.randomseed(os.time() * 64 + (thread_id or 0))
end

function request()
  sent = sent + 1
  local uuid = string.format("%s-%04x-4%03x-%04x-%04x%08x", prefix, thread_id or 0, math.random(0, 4095),
    32768 + math.random(0, 16383), math.random(0, 65535), sent)
  local i = math.random(count)
  local body = string.format(template, uuid, patients[i], items[i], services[i])
  return wrk.format("POST", "/fhir/CoverageEligibilityRequest", headers, body)
end
