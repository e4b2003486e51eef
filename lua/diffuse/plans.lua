-- Plans shipped as data: the best plans the searches found, loadable by name.
--
--   plan, info = diffuse.plans.load("fashion-s3-nfe5")
--   names = diffuse.plans.list()
--   diffuse.plans.save(path, plan, info)        -- writes one (atomically)
--
-- A shipped plan is a JSON file <name>.json holding {"plan": {...}, "info": {...}}: the plan
-- (docs/plans.md) and how it was found (search, fitness, seeds, measured scores).  A file with
-- a bare plan loads too (info = {}).  Files are looked up in $DIFFUSE_PLANS (directories
-- separated by ':'), next to the installed module (<lua dir>/diffuse/plans/), and in a source
-- tree's plans/ directory.
local json = require("diffuse.json")
local plan_mod = require("diffuse.plan")
local util = require("diffuse.util")

local M = {}
local F = "plans"

function M.dirs() return util.data_dirs("DIFFUSE_PLANS", "plans") end

-- Reads a plan file: -> plan, info | nil, message.
function M.read(path)
  if type(path) ~= "string" then util.fail(F .. ".read", "path must be a string", 2) end
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local text = f:read("a")
  f:close()
  local ok, v = pcall(json.decode, text)
  if not ok or type(v) ~= "table" then return nil, ("%s: not a JSON plan file (%s)"):format(path, tostring(v)) end
  local p, info = v, {}
  if v.plan ~= nil then p, info = v.plan, v.info or {} end
  local vok, verr = plan_mod.validate(p)
  if not vok then return nil, ("%s: %s"):format(path, verr) end
  return p, info
end

-- plans.load(name) -> plan, info | nil, message naming the directories looked in.
function M.load(name)
  if type(name) ~= "string" or name == "" then util.fail(F .. ".load", "name must be a non-empty string", 2) end
  local tried = {}
  for _, dir in ipairs(M.dirs()) do
    local path = ("%s/%s.json"):format(dir, name)
    local f = io.open(path, "rb")
    if f then
      f:close()
      local p, info = M.read(path)
      if not p then return nil, info end
      info.path = path
      return p, info
    end
    tried[#tried + 1] = dir
  end
  return nil, ("no plan '%s' (looked in %s; set DIFFUSE_PLANS to add directories)"):format(name, table.concat(tried, ", "))
end

-- plans.list() -> sorted names of the plans found in every directory.
function M.list()
  local names, seen = {}, {}
  for _, dir in ipairs(M.dirs()) do
    local p = io.popen(("ls -1 '%s' 2>/dev/null"):format(dir:gsub("'", "'\\''")))
    if p then
      for file in p:lines() do
        local n = file:match("^(.+)%.json$")
        if n and not seen[n] then
          seen[n] = true
          names[#names + 1] = n
        end
      end
      p:close()
    end
  end
  table.sort(names)
  return names
end

-- plans.save(path, plan, info) -> true | nil, message: {"plan", "info"} as JSON, written to a
-- temp file and renamed (never half-written).
function M.save(path, p, info)
  if type(path) ~= "string" then util.fail(F .. ".save", "path must be a string", 2) end
  local ok, err = plan_mod.validate(p)
  if not ok then util.fail(F .. ".save", err, 2) end
  if info ~= nil and type(info) ~= "table" then util.fail(F .. ".save", "info must be a table", 2) end
  -- laid out one field (and one step) per line so the file reads well in a diff
  local lines = { "{", '  "info": ' .. json.encode(info or {}) .. ",", '  "plan": {' }
  local fields = {}
  for k in pairs(p) do if k ~= "steps" then fields[#fields + 1] = k end end
  table.sort(fields)
  for _, k in ipairs(fields) do lines[#lines + 1] = ("    %s: %s,"):format(json.encode(k), json.encode(p[k])) end
  lines[#lines + 1] = '    "steps": ['
  for s, st in ipairs(p.steps) do
    lines[#lines + 1] = "      " .. json.encode(st) .. (s < #p.steps and "," or "")
  end
  lines[#lines + 1] = "    ]"
  lines[#lines + 1] = "  }"
  lines[#lines + 1] = "}"
  local text = table.concat(lines, "\n") .. "\n"
  return util.write_file(path, text)
end

return M
