-- diffuse.image: PNG files and image grids.  read/write are C (src/limage.c, src/png.c);
-- grid is a Lua loop over images whose per-pixel copies run in C (copy_, fill_).
local core = require("diffuse.core")

local M = {}

M.write = core._image.write
M.read = core._image.read

-- The value that maps to black for each accepted range string.
local BLACK = { ["-1,1"] = -1, ["0,1"] = 0 }

local function argerror(fname, n, msg)
  error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), 3)
end

local function is_tensor(x)
  local mt = type(x) == "userdata" and getmetatable(x)
  return mt and mt.__name == "diffuse.Tensor" or false
end

local function shape_str(s)
  return "[" .. table.concat(s, "x") .. "]"
end

local GRID_OPTS = { nrow = true, padding = true, pad_value = true, range = true }

local function check_grid(fname, batch, opts, batch_arg)
  local opts_arg = batch_arg + 1
  if not is_tensor(batch) then
    argerror(fname, batch_arg, "diffuse.Tensor expected, got " .. (type(batch) == "userdata" and "userdata" or type(batch)))
  end
  local s = batch:shape()
  if #s ~= 4 then
    argerror(fname, batch_arg, "batch must be (N, C, H, W), got " .. shape_str(s))
  end
  if s[1] < 1 or s[3] < 1 or s[4] < 1 then
    argerror(fname, batch_arg, "batch must hold at least one non-empty image, got " .. shape_str(s))
  end
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then argerror(fname, opts_arg, "table of options or nil expected, got " .. type(opts)) end
  for k in pairs(opts) do
    if not GRID_OPTS[k] then
      argerror(fname, opts_arg, ("unknown option '%s' (known: nrow, padding, pad_value, range)"):format(tostring(k)))
    end
  end
  local range = opts.range or "-1,1"
  if BLACK[range] == nil then
    argerror(fname, opts_arg, ('opts.range must be "-1,1" or "0,1", got %s'):format(
      type(range) == "string" and '"' .. range .. '"' or type(range)))
  end
  local n = s[1]
  local nrow = opts.nrow or math.ceil(math.sqrt(n))
  if type(nrow) ~= "number" or math.tointeger(nrow) == nil or nrow < 1 then
    argerror(fname, opts_arg, "opts.nrow must be a positive integer, got " .. tostring(nrow))
  end
  local padding = opts.padding or 2
  if type(padding) ~= "number" or math.tointeger(padding) == nil or padding < 0 then
    argerror(fname, opts_arg, "opts.padding must be a non-negative integer, got " .. tostring(padding))
  end
  local pad_value = opts.pad_value
  if pad_value == nil then pad_value = BLACK[range] end
  if type(pad_value) ~= "number" then
    argerror(fname, opts_arg, "opts.pad_value must be a number, got " .. type(pad_value))
  end
  return s, math.tointeger(nrow), math.tointeger(padding), pad_value, range
end

local function make_grid(batch, s, nrow, padding, pad_value)
  local n, c, h, w = s[1], s[2], s[3], s[4]
  local cols = math.min(nrow, n)
  local rows = (n + cols - 1) // cols
  local out = core.full({ c, rows * (h + padding) + padding, cols * (w + padding) + padding }, pad_value)
  for i = 0, n - 1 do
    local r, k = i // cols, i % cols
    out:narrow(2, r * (h + padding) + padding + 1, h)
       :narrow(3, k * (w + padding) + padding + 1, w)
       :copy_(batch:select(1, i + 1))
  end
  return out
end

-- grid(batch[, opts]) -> (C, H', W') tensor; see docs/images-and-data.md.
function M.grid(batch, opts)
  local s, nrow, padding, pad_value = check_grid("grid", batch, opts, 1)
  return make_grid(batch, s, nrow, padding, pad_value)
end

-- write_grid(path, batch[, opts]) -> true | nil, message
function M.write_grid(path, batch, opts)
  if type(path) ~= "string" then argerror("write_grid", 1, "string expected, got " .. type(path)) end
  local s, nrow, padding, pad_value, range = check_grid("write_grid", batch, opts, 2)
  return M.write(path, make_grid(batch, s, nrow, padding, pad_value), { range = range })
end

return M
