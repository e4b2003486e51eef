-- Shared spec helpers: `assert.allclose(expected, actual, atol, rtol)` for tensors, nested
-- tables or numbers, and small utilities used by several specs.
local assert = require("luassert")
local say = require("say")
local diffuse = require("diffuse")

local H = {}

local function flatten(x, out)
  out = out or {}
  if type(x) == "number" then
    out[#out + 1] = x
  elseif type(x) == "table" then
    for i = 1, #x do flatten(x[i], out) end
  elseif getmetatable(x) and tostring(x):find("^diffuse.Tensor") then
    flatten(x:totable(), out)
  else
    error("allclose: cannot compare a " .. type(x))
  end
  return out
end
H.flatten = flatten

local function shape_of(x)
  if type(x) == "number" then return "scalar" end
  if type(x) == "table" then
    local s, t = {}, x
    while type(t) == "table" do s[#s + 1] = #t; t = t[1] end
    return table.concat(s, "x")
  end
  return table.concat(x:shape(), "x")
end

-- Returns ok, message.
function H.close(expected, actual, atol, rtol)
  atol, rtol = atol or 1e-6, rtol or 1e-5
  if shape_of(expected) ~= shape_of(actual) then
    return false, ("shape %s expected, got %s"):format(shape_of(expected), shape_of(actual))
  end
  local e, a = flatten(expected), flatten(actual)
  local worst, at = 0, nil
  for i = 1, #e do
    local d = math.abs(e[i] - a[i])
    local bad = d > atol + rtol * math.abs(e[i]) or (e[i] ~= e[i]) ~= (a[i] ~= a[i])
    if e[i] == a[i] then bad = false end -- equal infinities
    if bad and (at == nil or d > worst) then worst, at = d, i end
  end
  if at then
    return false, ("element %d: expected %.9g, got %.9g (|diff| %.3g > atol %.3g + rtol %.3g)"):format(
      at, e[at], a[at], worst, atol, rtol)
  end
  return true
end

local function allclose(state, args)
  local ok, msg = H.close(args[1], args[2], args[3], args[4])
  state.failure_message = msg
  return ok
end
say:set("assertion.allclose.positive", "Expected values to be close: %s")
say:set("assertion.allclose.negative", "Expected values not to be close: %s")
assert:register("assertion", "allclose", allclose, "assertion.allclose.positive", "assertion.allclose.negative")

-- Error raised by f(...) as a string ("" if it did not raise).
function H.error_of(f, ...)
  local ok, err = pcall(f, ...)
  if ok then return "" end
  return tostring(err)
end

-- A tensor with the same values as t but laid out non-contiguously (a transposed copy seen
-- through a transpose, or a column-strided narrow), so every op can be run on both layouts.
function H.strided(t)
  local s = t:shape()
  if #s >= 2 then
    return t:transpose(#s - 1, #s):contiguous():transpose(#s - 1, #s)
  end
  local wide = diffuse.zeros(s[1], 2)
  wide:narrow(2, 1, 1):copy_(t:reshape(s[1], 1))
  return wide:select(2, 1)
end

-- ---- files ----

-- A new empty temporary directory.
function H.tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir '" .. p .. "'"))
  return p
end

function H.slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

function H.spit(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

function H.exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

H.diffuse = diffuse
return H
