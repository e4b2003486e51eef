-- Parity fixtures: loads spec/fixtures/parity-gmm2.json and rebuilds its problem, the exact
-- Gaussian-mixture denoiser, written here in plain Lua doubles from the fixture's README so
-- that it is independent of the library's own models.
local json = require("dkjson")
local diffuse = require("diffuse")

local P = {}

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local cached
function P.load()
  if not cached then
    cached = assert(json.decode(read("spec/fixtures/parity-gmm2.json")))
  end
  return cached
end

-- E[x0 | x0 + sh * eps = xhat] for the mixture, per row of a nested table, in double.
function P.posterior_mean(problem, rows, sh)
  local K, D = #problem.weights, problem.dim
  local out = {}
  for b = 1, #rows do
    local x = rows[b]
    local logits, best = {}, -math.huge
    for k = 1, K do
      local v = problem.stds[k] ^ 2 + sh * sh
      local d2 = 0
      for j = 1, D do d2 = d2 + (x[j] - problem.means[k][j]) ^ 2 end
      logits[k] = math.log(problem.weights[k]) - d2 / (2 * v) - D / 2 * math.log(v)
      if logits[k] > best then best = logits[k] end
    end
    local z = 0
    for k = 1, K do logits[k] = math.exp(logits[k] - best); z = z + logits[k] end
    local m = {}
    for j = 1, D do m[j] = 0 end
    for k = 1, K do
      local v = problem.stds[k] ^ 2 + sh * sh
      local c = problem.stds[k] ^ 2 / v
      for j = 1, D do
        local mu = problem.means[k][j]
        m[j] = m[j] + logits[k] / z * (mu + c * (x[j] - mu))
      end
    end
    out[b] = m
  end
  return out
end

-- The problem as a diffuse model predicting x0: D(x / alpha, sigma / alpha).
function P.model(problem)
  return setmetatable({ predicts = "x0" }, {
    __call = function(_, x, p)
      local a = p.alpha
      local rows = x:totable()
      if a ~= 1 then
        for b = 1, #rows do for j = 1, #rows[b] do rows[b][j] = rows[b][j] / a end end
      end
      return diffuse.tensor(P.posterior_mean(problem, rows, p.sigma / a))
    end,
  })
end

-- Cases whose name starts with prefix.
function P.cases(prefix)
  local out = {}
  for _, c in ipairs(P.load().cases) do
    if c.name:sub(1, #prefix) == prefix then out[#out + 1] = c end
  end
  return out
end

function P.label(c)
  local p = c.params
  return ("%s steps=%s %s"):format(c.name, tostring(p.steps or p.n), tostring(p.skip_type or p.schedule))
end

return P
