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

-- write_file(path, text) -> true | nil, message: atomic (temporary file in the same
-- directory, synced, renamed over path), so a failure never leaves a half-written file.
function M.write_file(path, text)
  return require("diffuse.core")._system.write_file(path, text)
end

return M
