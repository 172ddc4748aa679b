-- wrk script: authenticated POST /fhir/Patient of IG-valid insurees (the shape of tests/builders.py patient()).
--   wrk -t2 -c32 -d10s --latency -s bench/post.lua http://127.0.0.1:PORT -- TOKEN_FILE DATA_FILE PREFIX PHASE
-- DATA_FILE (written by bench/run.py) has tab-separated lines "F<TAB>json-string" (family names),
-- "G<TAB>json-string" (given names) and "V<TAB>village-id". Each request gets a fresh 9-digit CHFID:
-- PREFIX (digits no existing CHFID starts with), PHASE (0 warm-up, 1 measurement), the thread number and a
-- per-thread counter, so no two requests of one run (nor of the warm-up) collide.

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
local chfid_format
local counter = 0

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
  local prefix, phase = args[3], tonumber(args[4])
  local width = 9 - #prefix - 2
  chfid_format = prefix .. phase .. (thread_id or 0) .. "%0" .. width .. "d"
  headers = {
    ["Authorization"] = "Bearer " .. token,
    ["Accept"] = "application/fhir+json",
    ["Content-Type"] = "application/fhir+json",
  }
  math.randomseed(os.time() * 64 + (thread_id or 0))
end

function request()
  counter = counter + 1
  local birth = string.format("%04d-%02d-%02d", math.random(1950, 2020), math.random(1, 12), math.random(1, 28))
  local body = string.format(template, string.format(chfid_format, counter),
    families[math.random(#families)], givens[math.random(#givens)], genders[math.random(2)], birth,
    villages[math.random(#villages)])
  return wrk.format("POST", "/fhir/Patient", headers, body)
end
