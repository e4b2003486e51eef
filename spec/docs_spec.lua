-- Every ```lua block in README.md and docs/*.md is a runnable example: run each one.
-- Blocks run in their own environment (print is silenced) from the repository root.
require("helper")

local function blocks_of(path)
  local f = assert(io.open(path))
  local text = f:read("a")
  f:close()
  local out, line = {}, 1
  local pos = 1
  while true do
    local s, e, body = text:find("```lua\n(.-)\n```", pos)
    if not s then break end
    local _, nl = text:sub(pos, s):gsub("\n", "")
    line = line + nl
    out[#out + 1] = { code = body, line = line }
    pos = e + 1
    local _, bl = text:sub(s + 1, e):gsub("\n", "")
    line = line + bl
  end
  return out
end

local files = { "README.md" }
local p = io.popen("ls docs/*.md 2>/dev/null")
for name in p:lines() do files[#files + 1] = name end
p:close()

describe("documentation examples", function()
  for _, path in ipairs(files) do
    for _, b in ipairs(blocks_of(path)) do
      it(("%s:%d runs"):format(path, b.line), function()
        local env = setmetatable({ print = function() end }, { __index = _G })
        local chunk, err = load(b.code, "=" .. path .. ":" .. b.line, "t", env)
        assert(chunk, err)
        chunk()
      end)
    end
  end
end)
