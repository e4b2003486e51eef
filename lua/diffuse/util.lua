-- Small argument-checking helpers shared by the Lua modules (models, metrics, nn).  Errors
-- read "<function>: <what is wrong>", raised at the caller's level.
local M = {}

function M.is_tensor(v)
  return type(v) == "userdata" and getmetatable(v) ~= nil and v.gather ~= nil
end

function M.shape_str(t) return "[" .. table.concat(t:shape(), "x") .. "]" end

-- error("fname: msg") at `level` above the caller of fail (default: the caller's caller).
function M.fail(fname, msg, level) error(("%s: %s"):format(fname, msg), (level or 1) + 1) end

function M.sorted_keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = tostring(k) end
  table.sort(out)
  return out
end

-- opts (or {} when nil) after checking every key is in `valid`; unknown keys are named with
-- the valid ones.
function M.check_options(fname, opts, valid, level)
  if opts == nil then return {} end
  if type(opts) ~= "table" then M.fail(fname, "options must be a table", (level or 1) + 1) end
  for k in pairs(opts) do
    if valid[k] == nil then
      M.fail(fname, ("unknown option '%s' (valid: %s)"):format(tostring(k), table.concat(M.sorted_keys(valid), ", ")),
        (level or 1) + 1)
    end
  end
  return opts
end

-- v when it is an integer >= lo, else an error naming the option.
function M.check_int(fname, name, v, lo, level)
  if math.type(v) ~= "integer" or v < lo then
    M.fail(fname, ("'%s' must be an integer >= %d, got %s"):format(name, lo, tostring(v)), (level or 1) + 1)
  end
  return v
end

-- Where shipped data of one kind is looked for: the directories of the environment variable
-- env_var (separated by ':'), then <sub> next to the installed module (make install copies
-- it there), then a source tree's <sub>/.
function M.data_dirs(env_var, sub)
  local dirs = {}
  local env = os.getenv(env_var)
  if env then for d in env:gmatch("[^:]+") do dirs[#dirs + 1] = d end end
  local init = package.searchpath("diffuse", package.path)
  if init then
    local base = init:match("^(.*)/[^/]*$") or "."
    dirs[#dirs + 1] = base .. "/" .. sub
    dirs[#dirs + 1] = base .. "/../../" .. sub
  end
  return dirs
end

-- A new table with the fields of a, then those of b (b wins); b may be nil.
function M.merge(a, b)
  local out = {}
  for k, v in pairs(a) do out[k] = v end
  for k, v in pairs(b or {}) do out[k] = v end
  return out
end

-- write_file(path, text) -> true | nil, message: atomic (temporary file in the same
-- directory, synced, renamed over path), so a failure never leaves a half-written file.
function M.write_file(path, text)
  return require("diffuse.core")._system.write_file(path, text)
end

return M
