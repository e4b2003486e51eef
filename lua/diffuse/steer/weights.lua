-- Log-weights and resampling, shared by every steering method.
--
-- Weights are kept as log-weights (plain Lua lists of numbers) from start to end: sums go
-- through log-sum-exp and probabilities are exp(lw - lse), so a reward scale of 1e4 or a
-- product of a thousand potentials never overflows.  Uniform draws come from a seeded stream
-- over the counter-based generator, so every method is reproducible from its seed.
local core = require("diffuse.core")

local M = {}
local inf, exp, log = math.huge, math.exp, math.log

-- log(sum_i exp(lw[i])); -inf for an empty list or all -inf.
function M.logsumexp(lw)
  local m = -inf
  for i = 1, #lw do if lw[i] > m then m = lw[i] end end
  if m == -inf then return -inf end
  if m == inf then return inf end
  local s = 0
  for i = 1, #lw do s = s + exp(lw[i] - m) end
  return m + log(s)
end

-- log(mean_i exp(lw[i])).
function M.logmeanexp(lw) return M.logsumexp(lw) - log(#lw) end

-- Normalised probabilities and the log normaliser.
function M.normalize(lw)
  local lse = M.logsumexp(lw)
  if lse == -inf or lse ~= lse then
    error("weights: every log-weight is -inf or NaN: nothing to normalise", 2)
  end
  local p = {}
  for i = 1, #lw do p[i] = exp(lw[i] - lse) end
  return p, lse
end

-- Effective sample size (sum w)^2 / sum w^2, between 1 and #lw.
function M.ess(lw)
  local a = M.logsumexp(lw)
  local sq = {}
  for i = 1, #lw do sq[i] = 2 * lw[i] end
  return exp(2 * a - M.logsumexp(sq))
end

-- A reproducible stream of uniforms in [0, 1): stream(seed, key) gives draws that depend only
-- on (seed, key, how many were drawn before).  key separates the streams of one run (for
-- instance resampling from candidate choice); it maps to draw numbers far from the ones the
-- chains use for their Gaussian noise.
local Stream = {}
Stream.__index = Stream
local STREAM_BASE = 2 ^ 31

function M.stream(seed, key)
  if key ~= nil and (math.type(key) ~= "integer" or key < 0 or key >= 2 ^ 30) then
    error("weights.stream: key must be an integer in 0..2^30-1", 2)
  end
  return setmetatable({ seed = seed or 0, draw = math.tointeger(STREAM_BASE + (key or 0)), used = 0 }, Stream)
end

function Stream:uniforms(n)
  if n == 0 then return {} end
  local u = core.rand({ n }, { seed = self.seed, offset = self.used, draw = self.draw })
  self.used = self.used + n
  return u:totable()
end

function Stream:uniform() return self:uniforms(1)[1] end

-- Index drawn from the categorical distribution exp(lw) (normalised), given a uniform u.
function M.categorical(lw, u)
  local p = M.normalize(lw)
  local acc = 0
  for i = 1, #p do
    acc = acc + p[i]
    if u < acc then return i end
  end
  for i = #p, 1, -1 do if p[i] > 0 then return i end end
end

-- Cumulative probabilities (the last forced to 1).
local function cumulative(lw)
  local p = M.normalize(lw)
  local c, acc = {}, 0
  for i = 1, #p do acc = acc + p[i]; c[i] = acc end
  for i = #c, 1, -1 do
    if p[i] > 0 then
      for j = i, #c do c[j] = 1 end
      break
    end
  end
  return c
end

-- Smallest index i with c[i] > u (binary search).
local function search(c, u)
  local lo, hi = 1, #c
  while lo < hi do
    local mid = (lo + hi) // 2
    if c[mid] > u then hi = mid else lo = mid + 1 end
  end
  return lo
end

-- n indices drawn independently with probabilities exp(lw) (multinomial resampling).
function M.multinomial(lw, n, stream)
  local c = cumulative(lw)
  local u = stream:uniforms(n)
  local out = {}
  for i = 1, n do out[i] = search(c, u[i]) end
  return out
end

-- n indices by systematic resampling: one uniform u, points (k - 1 + u) / n.  Lower variance
-- than multinomial; index i appears floor(n p_i) or ceil(n p_i) times.
function M.systematic(lw, n, stream)
  local c = cumulative(lw)
  local u = stream:uniform()
  local out, j = {}, 1
  for k = 1, n do
    local point = (k - 1 + u) / n
    while j < #c and c[j] <= point do j = j + 1 end
    out[k] = j
  end
  return out
end

M.methods = { multinomial = M.multinomial, systematic = M.systematic }

function M.resample(method, lw, n, stream)
  local f = M.methods[method]
  if not f then
    error(("weights: unknown resampling '%s' (valid: multinomial, systematic)"):format(tostring(method)), 2)
  end
  return f(lw, n, stream)
end

-- The entries of a list at the given indices (a per-particle list after resampling).
function M.gather(list, idx)
  local out = {}
  for k, i in ipairs(idx) do out[k] = list[i] end
  return out
end

-- Index of the largest value (first on ties).
function M.argmax(v)
  local best, bi = -inf, 1
  for i = 1, #v do if v[i] > best then best, bi = v[i], i end end
  return bi
end

return M
