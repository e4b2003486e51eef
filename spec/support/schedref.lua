-- Loads spec/fixtures/schedules-reference.json (see spec/fixtures/README.md), with the
-- strings "inf" / "-inf" / "nan" turned back into numbers.
local json = require("dkjson")

local function fix(v)
  if v == "inf" then return math.huge elseif v == "-inf" then return -math.huge elseif v == "nan" then return 0 / 0 end
  if type(v) == "table" then
    for k, x in pairs(v) do v[k] = fix(x) end
  end
  return v
end

local cached
return function()
  if not cached then
    local f = assert(io.open("spec/fixtures/schedules-reference.json", "rb"))
    cached = fix(assert(json.decode(f:read("a"))))
    f:close()
  end
  return cached
end
