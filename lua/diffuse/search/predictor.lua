-- A light learned predictor of candidate quality: a small MLP (diffuse.nn: Linear, SiLU,
-- AdamW) on a plan's feature vector, trained with a pairwise ranking loss.  For a pair whose
-- true scores say a is better than b (lower score), the loss is log(1 + exp(f(a) - f(b))),
-- so only the order of the scores matters: FD values, ODE errors and failed runs (math.huge)
-- train it alike.
--
--   pr = predictor.new{dim = D, hidden = 64, layers = 2, seed = 1, lr = 3e-3,
--                      weight_decay = 1e-4, epochs = 150, max_pairs = 20000}
--   stats = pr:fit(features, scores)     -- features: list of D-vectors; stats.loss per epoch
--   values = pr:predict(features)        -- lower is predicted better
--   predictor.kendall_tau(a, b)          -- rank agreement of two lists in [-1, 1]
local core = require("diffuse.core")
local nn = require("diffuse.nn")
local util = require("diffuse.util")

local M = {}
local F = "search.predictor"

local Predictor = {}
Predictor.__index = Predictor

local valid = { dim = true, hidden = true, layers = true, seed = true, lr = true, weight_decay = true, epochs = true,
  max_pairs = true }

function M.new(o)
  o = util.check_options(F .. ".new", o, valid, 2)
  if math.type(o.dim) ~= "integer" or o.dim < 1 then util.fail(F .. ".new", "'dim' (the feature length) must be an integer >= 1", 2) end
  local self = setmetatable({}, Predictor)
  self.dim = o.dim
  self.hidden = o.hidden or 64
  self.layers = o.layers or 2
  self.seed = o.seed or 1
  self.lr = o.lr or 3e-3
  self.weight_decay = o.weight_decay or 1e-4
  self.epochs = o.epochs or 150
  self.max_pairs = o.max_pairs or 20000
  return self
end

-- A fresh network: every fit starts from the same seeded initialisation, so a fit depends
-- only on its data.
local function build(self)
  local mods = {}
  local d = self.dim
  for i = 1, self.layers do
    mods[#mods + 1] = nn.Linear(d, self.hidden, { seed = self.seed * 101 + i })
    mods[#mods + 1] = nn.SiLU()
    d = self.hidden
  end
  mods[#mods + 1] = nn.Linear(d, 1, { seed = self.seed * 101 + 99 })
  return nn.Sequential(mods)
end

local function check_features(fname, X)
  if type(X) ~= "table" or #X == 0 or type(X[1]) ~= "table" then
    util.fail(fname, "features must be a non-empty list of vectors (lists of numbers)", 3)
  end
end

-- Standardised input rows (the mean and spread come from the training data).
local function standardize(self, X)
  local rows = {}
  for i, x in ipairs(X) do
    if #x ~= self.dim then util.fail(F, ("feature vector %d has %d entries, expected %d"):format(i, #x, self.dim), 4) end
    local r = {}
    for k = 1, self.dim do r[k] = (x[k] - self.mu[k]) / self.sd[k] end
    rows[i] = r
  end
  return core.tensor(rows)
end

-- A small deterministic generator for the pair sampling (splitmix64).
local function lcg(seed)
  local s = seed * 0x2545F4914F6CDD1D
  return function(n)
    s = s + 0x9E3779B97F4A7C15
    local z = s
    z = (z ~ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ~ (z >> 27)) * 0x94D049BB133111EB
    z = z ~ (z >> 31)
    return 1 + (z >> 11) % n
  end
end

-- pr:fit(features, scores) -> {loss = {per epoch}, pairs = count}
function Predictor:fit(X, scores)
  check_features(F .. ":fit", X)
  if type(scores) ~= "table" or #scores ~= #X then util.fail(F .. ":fit", "scores must be a list as long as the features", 2) end
  local n = #X
  -- feature statistics
  self.mu, self.sd = {}, {}
  for k = 1, self.dim do
    local m = 0
    for i = 1, n do m = m + X[i][k] end
    m = m / n
    local v = 0
    for i = 1, n do v = v + (X[i][k] - m) ^ 2 end
    self.mu[k] = m
    self.sd[k] = math.sqrt(v / n) + 1e-3
  end
  local xt = standardize(self, X)
  -- the ordered pairs (better, worse); all of them when few, a seeded sample otherwise
  local pairs_list = {}
  local total = n * (n - 1) // 2
  if total <= self.max_pairs then
    for i = 1, n do
      for j = i + 1, n do
        local a, b = scores[i], scores[j]
        if a < b then pairs_list[#pairs_list + 1] = { i, j }
        elseif b < a then pairs_list[#pairs_list + 1] = { j, i } end
      end
    end
  else
    local draw = lcg(self.seed + n)
    for _ = 1, self.max_pairs do
      local i, j = draw(n), draw(n)
      local a, b = scores[i], scores[j]
      if a < b then pairs_list[#pairs_list + 1] = { i, j }
      elseif b < a then pairs_list[#pairs_list + 1] = { j, i } end
    end
  end
  self.net = build(self)
  local net = self.net
  local stats = { loss = {}, pairs = #pairs_list }
  if #pairs_list == 0 then return stats end
  local opt = nn.AdamW(net, { lr = self.lr, weight_decay = self.weight_decay })
  local np = #pairs_list
  local exp, log = math.exp, math.log
  for _ = 1, self.epochs do
    net:train()
    net:zero_grad()
    local out = net:forward(xt):totable()
    local grad = {}
    for i = 1, n do grad[i] = 0 end
    local loss = 0
    for _, pr in ipairs(pairs_list) do
      local a, b = pr[1], pr[2]
      local d = out[a][1] - out[b][1] -- want f(a) < f(b): d negative
      -- softplus(d) and its derivative sigmoid(d), computed stably
      local sp, sg
      if d > 0 then
        local e = exp(-d)
        sp, sg = d + log(1 + e), 1 / (1 + e)
      else
        local e = exp(d)
        sp, sg = log(1 + e), e / (1 + e)
      end
      loss = loss + sp
      grad[a] = grad[a] + sg / np
      grad[b] = grad[b] - sg / np
    end
    stats.loss[#stats.loss + 1] = loss / np
    local g = {}
    for i = 1, n do g[i] = { grad[i] } end
    net:backward(core.tensor(g))
    opt:step()
  end
  net:eval()
  return stats
end

-- pr:predict(features) -> list of predicted values (lower is better)
function Predictor:predict(X)
  if not self.net then util.fail(F .. ":predict", "the predictor is not trained (call fit first)", 2) end
  check_features(F .. ":predict", X)
  self.net:eval()
  local out = self.net:forward(standardize(self, X)):totable()
  local r = {}
  for i, v in ipairs(out) do r[i] = v[1] end
  return r
end

-- Kendall's rank correlation of two equally long lists over the untied pairs: (concordant -
-- discordant) / (concordant + discordant); pairs tied in either list (or with an infinite
-- value on both sides) count as neither.
function M.kendall_tau(a, b)
  if type(a) ~= "table" or type(b) ~= "table" or #a ~= #b then util.fail(F .. ".kendall_tau", "two lists of equal length expected", 2) end
  local c, d = 0, 0
  for i = 1, #a do
    for j = i + 1, #a do
      local s = (a[i] - a[j]) * (b[i] - b[j])
      if s > 0 then c = c + 1 elseif s < 0 then d = d + 1 end
    end
  end
  if c + d == 0 then return 0 end
  return (c - d) / (c + d)
end

return M
