-- wrk script: authenticated POST /fhir/Patient of IG-valid insurees (the shape of tests/builders.py patient()).
--   wrk -t2 -c32 -d10s --latency -s bench/post.lua http://127.0.0.1:PORT -- TOKEN DATA CHFIDS THREADS
-- TOKEN is a file holding the bearer token. DATA (written by bench/run.py) has tab-separated lines
-- "F<TAB>json-string" (family names), "G<TAB>json-string" (given names) and "V<TAB>village-id". CHFIDS lists
-- 9-digit CHFIDs that no insuree has, one a line: thread t (0-based) of THREADS sends the (t+1)th, then every
-- THREADS-th after it, so each request creates a new insuree. Past the end of the list the last one is
-- repeated: those requests fail with 409 and show as non-2xx (bench/run.py sizes the list to avoid that).

local threads = 0

function setup(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end

local IG = "https://openimis.github.io/openimis_fhir_r4_ig"
local EXT = IG .. "/StructureDefinition/"
local CS = IG .. "/CodeSystem/"

-- Placeholders in order: CHFID, family (JSON string), given (JSON string), gender, birthDate, village id.
local template = '{"resourceType":"Patient",'
  .. '"meta":{"profile":["' .. EXT .. 'openimis-patient"]},'
  .. '"extension":[{"url":"' .. EXT .. 'patient-is-head","valueBoolean":false}],'
  .. '"identifier":[{"type":{"coding":[{"system":"' .. CS .. 'openimis-identifiers","code":"Code"}]},'
  .. '"value":"%s"}],'
  .. '"name":[{"use":"official","family":%s,"given":[%s]}],'
  .. '"gender":"%s","birthDate":"%s",'
  .. '"address":[{"extension":['
  .. '{"url":"' .. EXT .. 'address-municipality","valueString":"Ward"},'
  .. '{"url":"' .. EXT .. 'address-location-reference","valueReference":{"reference":"Location/%s"}}],'
  .. '"use":"home","type":"physical","state":"Region","district":"District","city":"Village"}]}'

local genders = { "male", "female" }
local families, givens, villages = {}, {}, {}
local headers
local chfids = {}
local next_chfid, stride

function init(args)
  local fh = assert(io.open(args[1], "r"))
  local token = assert(fh:read("*l"), "empty token file")
  fh:close()
  fh = assert(io.open(args[2], "r"))
  for line in fh:lines() do
    local tag, value = line:match("^(%a)\t(.*)$")
    if tag == "F" then
      families[#families + 1] = value
    elseif tag == "G" then
      givens[#givens + 1] = value
    elseif tag == "V" then
      villages[#villages + 1] = value
    end
  end
  fh:close()
  assert(#families > 0 and #givens > 0 and #villages > 0, "incomplete POST data file")
  fh = assert(io.open(args[3], "r"))
  for line in fh:lines() do
    if line ~= "" then
      chfids[#chfids + 1] = line
    end
  end
  fh:close()
  stride = assert(tonumber(args[4]), "THREADS missing")
  next_chfid = (thread_id or 0) + 1
  assert(next_chfid <= #chfids, "not enough CHFIDs")
  headers = {
    ["Authorization"] = "Bearer " .. token,
    ["Accept"] = "application/fhir+json",
    ["Content-Type"] = "application/fhir+json",
  }
  math.randomseed(os.time() * 64 + (thread_id or 0))
end

function request()
  local chfid = chfids[next_chfid]
  if next_chfid + stride <= #chfids then
    next_chfid = next_chfid + stride
  end
  local birth = string.format("%04d-%02d-%02d", math.random(1950, 2020), math.random(1, 12), math.random(1, 28))
  local body = string.format(template, chfid,
    families[math.random(#families)], givens[math.random(#givens)], genders[math.random(2)], birth,
    villages[math.random(#villages)])
  return wrk.format("POST", "/fhir/Patient", headers, body)
end
