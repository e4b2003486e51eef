-- The decision space of the solver-schedule search (the unified sampling framework, USF):
-- plans with a fixed number of model evaluations, their random generation, mutation,
-- crossover and a per-step feature encoding for the learned predictor.
--
--   sp = space.new{schedule = s, nfe = 5, ...options}
--   p  = sp:random(rng)                  a random valid plan with exactly `nfe` evaluations
--   q  = sp:mutate(p, rng)               a mutated copy (and the name of the mutation)
--   c  = sp:crossover(a, b, rng)         a child of two plans
--   sp:repair(p)                         makes any plan-shaped table valid in the space (in place)
--   sp:check(p)                          true | nil, message (plan.validate + NFE budget + fixed ends)
--   sp:encode(p)                         list of per-step feature vectors
--   sp:features(p)                       one flat vector (steps padded to the longest plan)
--   sp:presets()                         the named solvers at this NFE as plans
--   sp:key(p)                            a canonical text: equal plans give equal keys
--
-- Decisions per step (docs/plans.md): the time point (its lambda), prediction type, order
-- 1..max_order (limited by the points evaluated before the step), the past points the
-- derivatives are estimated from (the default: the points just before; or any earlier ones,
-- which gives the "low-order" first-derivative estimate from a distant point), the derivative
-- scaling (taylor, dpmsolver, bh1, bh2, {linear = c}), the UniC corrector (no extra NFE,
-- never on the last step), optionally eta, and (option `analytic`) an analytic first step:
-- plan field `analytic = true`, the first model output replaced by the Gaussian
-- approximation's closed form, so the plan has one more time point for the same NFE.
local json = require("diffuse.json")
local plan_mod = require("diffuse.plan")
local util = require("diffuse.util")

local M = {}
local F = "search.space"

------------------------------------------------------------------------------------------
-- A small seeded generator (splitmix64) whose whole state is one integer, so a search can
-- record and restore it, independent of math.random.

local Rng = {}
Rng.__index = Rng

function M.rng(seed)
  if math.type(seed) ~= "integer" then
    if type(seed) ~= "number" or seed ~= math.floor(seed) then util.fail(F .. ".rng", "seed must be an integer", 2) end
    seed = math.tointeger(seed)
  end
  local r = setmetatable({ s = seed * 0x2545F4914F6CDD1D + 0x9E3779B97F4A7C15 }, Rng)
  return r
end

function Rng:next()
  self.s = self.s + 0x9E3779B97F4A7C15
  local z = self.s
  z = (z ~ (z >> 30)) * 0xBF58476D1CE4E5B9
  z = (z ~ (z >> 27)) * 0x94D049BB133111EB
  return z ~ (z >> 31)
end

-- uniform in [0, 1)
function Rng:uniform() return (self:next() >> 11) * (1.0 / 9007199254740992.0) end
-- integer in [a, b]
function Rng:int(a, b) return a + math.floor(self:uniform() * (b - a + 1)) end
function Rng:normal()
  local u = 1 - self:uniform()
  return math.sqrt(-2 * math.log(u)) * math.cos(2 * math.pi * self:uniform())
end
function Rng:choice(list) return list[self:int(1, #list)] end
function Rng:bernoulli(p) return self:uniform() < p end
-- A derived generator (for a sub-task that must not shift this one's sequence).
function Rng:split() return M.rng(self:next()) end
function Rng:state() return self.s end
function Rng:set_state(s) self.s = s end

------------------------------------------------------------------------------------------

local Space = {}
Space.__index = Space
M.Space = Space

local default_scales = { "taylor", "dpmsolver", "bh1", "bh2", "linear" }
local scale_index = { taylor = 1, dpmsolver = 2, bh1 = 3, bh2 = 4, linear = 5 }

local options = {
  schedule = true, nfe = true, t_start = true, t_end = true, max_order = true, preds = true, scales = true,
  corrector = true, eta = true, analytic = true, min_gap = true, linear_range = true, max_lookback = true,
  max_steps = true, free_end = true,
}

-- space.new{schedule, nfe, t_start = schedule.t_start, t_end = schedule.t_end, max_order = 4,
--   preds = {"data", "noise"}, scales = {"taylor", "dpmsolver", "bh1", "bh2", "linear"},
--   corrector = true, eta = false | {0, 0.3, ...} (values a step may take), analytic = false,
--   min_gap = 0.02 (smallest lambda step as a fraction of the lambda range), linear_range = 1
--   (|c| of {linear = c}), max_lookback = 4 (how far back derivative points reach),
--   free_end = false | {t_lo, t_hi} (the last time is searched in that range)}
function M.new(o)
  o = util.check_options(F .. ".new", o, options, 2)
  local sched = o.schedule
  if type(sched) ~= "table" or type(sched.lambda) ~= "function" then util.fail(F .. ".new", "'schedule' is required (a diffuse.schedule)", 2) end
  local nfe = o.nfe
  if math.type(nfe) ~= "integer" or nfe < 1 then util.fail(F .. ".new", "'nfe' must be an integer >= 1", 2) end
  local self = setmetatable({}, Space)
  self.schedule = sched
  self.nfe = nfe
  self.t_start = o.t_start or sched.t_start
  self.t_end = o.t_end or sched.t_end
  if not (self.t_start > self.t_end and self.t_end >= 0) then util.fail(F .. ".new", "need t_start > t_end >= 0", 2) end
  self.max_order = o.max_order or 4
  if math.type(self.max_order) ~= "integer" or self.max_order < 1 or self.max_order > plan_mod.max_order then
    util.fail(F .. ".new", ("max_order must be an integer from 1 to %d"):format(plan_mod.max_order), 2)
  end
  self.preds = o.preds or { "data", "noise" }
  for _, p in ipairs(self.preds) do
    if p ~= "data" and p ~= "noise" then util.fail(F .. ".new", "preds lists \"data\" and/or \"noise\"", 2) end
  end
  self.scales = o.scales or default_scales
  for _, s in ipairs(self.scales) do
    if not scale_index[s] then util.fail(F .. ".new", ("unknown scale '%s' (valid: %s)"):format(tostring(s), table.concat(default_scales, ", ")), 2) end
  end
  self.corrector = o.corrector ~= false
  self.eta = o.eta or false
  if self.eta and type(self.eta) ~= "table" then util.fail(F .. ".new", "eta must be false or a list of values >= 0", 2) end
  self.analytic = o.analytic or false
  self.min_gap = o.min_gap or 0.02
  self.linear_range = o.linear_range or 1
  self.max_lookback = o.max_lookback or 4
  self.free_end = o.free_end or false
  if self.free_end and (type(self.free_end) ~= "table" or not (self.free_end[1] < self.free_end[2])) then
    util.fail(F .. ".new", "free_end must be false or {t_lo, t_hi} with t_lo < t_hi", 2)
  end
  -- The lambda range the grid lives in; t = 0 (lambda = inf) as an end is kept as a time
  -- and never moved.
  self.lam_start = sched:lambda(self.t_start)
  local lam_end_t = self.free_end and self.free_end[1] or self.t_end
  self.lam_end = sched:lambda(math.max(lam_end_t, 1e-12))
  if lam_end_t == 0 then self.lam_end = math.max(self.lam_end, self.lam_start + 20) end
  self.lam_range = self.lam_end - self.lam_start
  self.max_steps = o.max_steps or (nfe + (self.analytic and 1 or 0))
  self.step_dim = 24
  return self
end

function Space:lambda(t)
  if t <= 0 then return self.lam_end end
  return self.schedule:lambda(t)
end

-- NFE of a plan: every point but the last is evaluated, except the first with an analytic
-- first step.
M.nfe = plan_mod.nfe

local function copy(v)
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = copy(x) end
  return out
end
M.copy = copy

function Space:check(p)
  local ok, err = plan_mod.validate(p)
  if not ok then return nil, err end
  if M.nfe(p) ~= self.nfe then return nil, ("space: plan has NFE %d, the space %d"):format(M.nfe(p), self.nfe) end
  if p.times[1] ~= self.t_start then return nil, "space: the first time is not t_start" end
  if not self.free_end and p.times[#p.times] ~= self.t_end then return nil, "space: the last time is not t_end" end
  return true
end

------------------------------------------------------------------------------------------
-- Grids: the first time is t_start, the last t_end (or within free_end), the interior
-- points strictly between with lambda gaps of at least min_gap * range.

local function t_of(self, lam) return self.schedule:t_of_lambda(lam) end

-- Interior lambdas of `count` points spread over (lo, hi) with a random warp and jitter.
local function random_lambdas(self, lo, hi, count, rng)
  local g = math.exp((rng:uniform() * 2 - 1) * math.log(2.5)) -- warp exponent in [0.4, 2.5]
  local out = {}
  for i = 1, count do
    local u = (i + (rng:uniform() - 0.5) * 0.6) / (count + 1)
    u = math.min(math.max(u, 1e-3), 1 - 1e-3) ^ g
    out[i] = lo + (hi - lo) * u
  end
  table.sort(out)
  return out
end

-- Makes the grid valid: sorted, fixed ends, gaps >= min_gap (in lambda).  Returns false
-- when the points cannot fit.
function Space:fix_times(times)
  local n = #times
  local last = times[n]
  if self.free_end then
    last = math.min(math.max(last, self.free_end[1]), self.free_end[2])
  else
    last = self.t_end
  end
  local lam = {}
  for i = 2, n - 1 do lam[#lam + 1] = self:lambda(times[i]) end
  table.sort(lam)
  local lo = self.lam_start
  local hi = last <= 0 and self.lam_end or self:lambda(last)
  local gap = self.min_gap * self.lam_range
  local m = #lam
  if (m + 1) * gap >= hi - lo then
    -- too many points for the range: spread them evenly
    gap = (hi - lo) / (m + 1) * 0.999
  end
  -- forward pass: each at least gap above the previous; backward pass: at least gap below the next
  for i = 1, m do
    local prev = i == 1 and lo or lam[i - 1]
    if lam[i] < prev + gap then lam[i] = prev + gap end
  end
  for i = m, 1, -1 do
    local nxt = i == m and hi or lam[i + 1]
    if lam[i] > nxt - gap then lam[i] = nxt - gap end
  end
  local out = { self.t_start }
  for i = 1, m do out[#out + 1] = t_of(self, lam[i]) end
  out[#out + 1] = last
  for i = 2, #out do
    if not (out[i] < out[i - 1]) then return nil end
  end
  for i = 1, #out do times[i] = out[i] end
  return true
end

------------------------------------------------------------------------------------------
-- Steps

local multistep_scales = { deis = true, ipndm = true }

-- The points available to step s (base s): 1 .. s-1, within max_lookback of s.
local function lowest_point(self, s) return math.max(1, s - self.max_lookback) end

-- Makes step s valid in the space (in place).
function Space:repair_step(st, s, n)
  local base = st.base or s
  if not (math.type(base) == "integer" and base >= 1 and base <= s) then base = s end
  st.base = base ~= s and base or nil
  st.pred = st.pred or "data"
  local order = math.tointeger(st.order) or 1
  order = math.max(1, math.min(order, self.max_order, plan_mod.max_order))
  -- available derivative points: 1..s except the base
  if order > s then order = s end
  -- explicit derivative points: the given ones (or the default ones just before the base)
  -- that are valid, filled up with the most recent unused points
  local src = st.points
  if not src then
    src = {}
    for i = 1, order - 1 do src[i] = base - i end
  end
  local seen, pts = { [base] = true }, {}
  for _, j in ipairs(src) do
    if math.type(j) == "integer" and j >= 1 and j <= s and not seen[j] and #pts < order - 1 then
      seen[j] = true
      pts[#pts + 1] = j
    end
  end
  local j = s
  while #pts < order - 1 and j >= 1 do
    if not seen[j] then seen[j] = true; pts[#pts + 1] = j end
    j = j - 1
  end
  order = #pts + 1
  -- the default points (the ones just before the base) need no list
  local default = true
  for i, q in ipairs(pts) do if q ~= base - i then default = false end end
  st.points = (#pts > 0 and not default) and pts or nil
  st.order = order
  if s == n then st.corrector = nil end
  if st.corrector ~= true then st.corrector = nil end
  if multistep_scales[st.scale] then
    local ok = st.pred == "noise" and base == s and not st.corrector and (st.eta or 0) == 0 and
      not (st.scale == "ipndm" and order > 4)
    if ok and st.points then
      for i, q in ipairs(st.points) do if q ~= s - i then ok = false end end
    end
    if not ok then st.scale = nil end
  end
  -- the scaling only matters with a derivative (order >= 2) or a corrector
  if order == 1 and not st.corrector and not multistep_scales[st.scale] then st.scale = nil end
  if st.scale == "taylor" then st.scale = nil end
  if st.eta == 0 then st.eta = nil end
  st.note = nil
  return st
end

-- Makes a plan-shaped table valid in the space (in place); returns it, or nil when the grid
-- cannot be fixed.
function Space:repair(p)
  if not self.analytic then p.analytic = nil end
  if p.analytic ~= true then p.analytic = nil end
  if not self:fix_times(p.times) then return nil end
  local n = #p.times - 1
  for s = #p.steps + 1, n do p.steps[s] = { order = 1 } end
  for s = #p.steps, n + 1, -1 do p.steps[s] = nil end
  for s = 1, n do self:repair_step(p.steps[s], s, n) end
  return p
end

local function random_scale(self, rng)
  local s = rng:choice(self.scales)
  if s == "linear" then return { linear = (rng:uniform() * 2 - 1) * self.linear_range } end
  return s
end

-- A random step decision for step s of n.
function Space:random_step(s, n, rng)
  local st = { pred = rng:choice(self.preds) }
  local maxo = math.min(self.max_order, s)
  -- favour orders 2 and 3 like the solvers that work
  local weights = { 0.25, 0.4, 0.25, 0.1, 0.05, 0.05 }
  local total = 0
  for k = 1, maxo do total = total + weights[k] end
  local u, acc = rng:uniform() * total, 0
  st.order = 1
  for k = 1, maxo do
    acc = acc + weights[k]
    if u < acc then st.order = k; break end
  end
  if st.order >= 2 and rng:bernoulli(0.25) then st.points = self:random_points(s, st.order, rng) end
  if self.corrector and s < n and rng:bernoulli(0.4) then st.corrector = true end
  st.scale = random_scale(self, rng)
  if self.eta and rng:bernoulli(0.5) then st.eta = rng:choice(self.eta) end
  return st
end

-- order - 1 distinct earlier points for step s (base s), within max_lookback.
function Space:random_points(s, order, rng)
  local pool = {}
  for j = s - 1, lowest_point(self, s), -1 do pool[#pool + 1] = j end
  if #pool < order - 1 then
    pool = {}
    for j = s - 1, 1, -1 do pool[#pool + 1] = j end
  end
  local pts = {}
  for i = 1, order - 1 do
    local k = rng:int(i, #pool)
    pool[i], pool[k] = pool[k], pool[i]
    pts[i] = pool[i]
  end
  table.sort(pts, function(a, b) return a > b end)
  return pts
end

-- The number of grid points of a plan with this NFE.
function Space:points_for(analytic) return self.nfe + 1 + (analytic and 1 or 0) end

function Space:random(rng)
  local analytic = self.analytic and rng:bernoulli(0.5) or nil
  local npts = self:points_for(analytic)
  local hi = self.lam_end
  local last = self.t_end
  if self.free_end then
    last = self.free_end[1] + rng:uniform() * (self.free_end[2] - self.free_end[1])
    hi = self:lambda(last)
  end
  local lams = random_lambdas(self, self.lam_start, hi, npts - 2, rng)
  local times = { self.t_start }
  for _, l in ipairs(lams) do times[#times + 1] = t_of(self, l) end
  times[#times + 1] = last
  local n = npts - 1
  local steps = {}
  for s = 1, n do steps[s] = self:random_step(s, n, rng) end
  local p = { times = times, steps = steps, analytic = analytic }
  return self:canonical(assert(self:repair(p)))
end

------------------------------------------------------------------------------------------
-- Mutations.  Each returns a new plan (the input is not modified), always valid and with the
-- space's NFE.

-- Grid changes remap the step references: after removing point r, indices above r shift
-- down; after inserting a point at r, indices >= r shift up.
local function remap_steps(steps, f)
  for s, st in ipairs(steps) do
    -- default derivative points (the ones just before the base) made explicit first, so they
    -- keep pointing at the same time points
    local order = st.order or 1
    if order >= 2 and not st.points then
      local b = st.base or s
      st.points = {}
      for i = 1, order - 1 do if b - i >= 1 then st.points[#st.points + 1] = b - i end end
    end
    if st.base then st.base = f(st.base) end
    if st.points then
      local pts = {}
      for _, j in ipairs(st.points) do
        local q = f(j)
        if q then pts[#pts + 1] = q end
      end
      st.points = pts
    end
  end
end

local function delete_point(p, r)
  table.remove(p.times, r)
  -- the step leaving r - 1 now reaches r + 1: the step leaving r disappears
  table.remove(p.steps, r)
  remap_steps(p.steps, function(j)
    if j == r then return nil end
    return j > r and j - 1 or j
  end)
end

local function insert_point(p, r, t, st)
  table.insert(p.times, r, t)
  remap_steps(p.steps, function(j) return j >= r and j + 1 or j end)
  table.insert(p.steps, r, st)
end

-- A new interior point inside a random gap (in lambda).
function Space:random_insert(p, rng)
  local n = #p.times
  local g = rng:int(1, n - 1) -- between points g and g+1
  local lo, hi = self:lambda(p.times[g]), self:lambda(p.times[g + 1])
  local lam = lo + (hi - lo) * (0.2 + 0.6 * rng:uniform())
  local nsteps = #p.steps + 1
  insert_point(p, g + 1, t_of(self, lam), self:random_step(g + 1, nsteps, rng))
end

local mutations = {}

mutations.move = function(self, p, rng)
  local n = #p.times
  if n <= 2 then return self:mutate_step_field(p, rng) end
  local i = rng:int(2, n - 1)
  local lo, hi = self:lambda(p.times[i - 1]), self:lambda(p.times[i + 1])
  local cur = self:lambda(p.times[i])
  local lam
  if rng:bernoulli(0.5) then
    lam = cur + rng:normal() * 0.15 * (hi - lo)
  else
    lam = lo + (hi - lo) * rng:uniform()
  end
  lam = math.min(math.max(lam, lo), hi)
  p.times[i] = t_of(self, lam)
  return "move"
end

mutations.insert_delete = function(self, p, rng)
  if #p.times <= 2 then return mutations.move(self, p, rng) end
  delete_point(p, rng:int(2, #p.times - 1))
  self:random_insert(p, rng)
  return "insert_delete"
end

mutations.move_end = function(self, p, rng)
  if not self.free_end then return mutations.move(self, p, rng) end
  local lo, hi = self.free_end[1], self.free_end[2]
  local n = #p.times
  local t = p.times[n] + rng:normal() * 0.2 * (hi - lo)
  p.times[n] = math.min(math.max(t, lo), hi)
  return "move_end"
end

mutations.analytic = function(self, p, rng)
  if not self.analytic then return mutations.order(self, p, rng) end
  if p.analytic then
    p.analytic = nil
    if #p.times > 2 then delete_point(p, rng:int(2, #p.times - 1)) end
  else
    p.analytic = true
    self:random_insert(p, rng)
  end
  return "analytic"
end

local function pick_step(p, rng) return rng:int(1, #p.steps) end

mutations.order = function(self, p, rng)
  local s = pick_step(p, rng)
  local st = p.steps[s]
  local maxo = math.min(self.max_order, s)
  local cur = st.order or 1
  local o = cur + (rng:bernoulli(0.5) and 1 or -1)
  if o < 1 or o > maxo then o = rng:int(1, maxo) end
  st.order = o
  if st.points then
    if o - 1 < #st.points then
      for k = #st.points, o, -1 do st.points[k] = nil end
    end
  end
  return "order"
end

mutations.pred = function(self, p, rng)
  local st = p.steps[pick_step(p, rng)]
  local others = {}
  for _, v in ipairs(self.preds) do if v ~= (st.pred or "data") then others[#others + 1] = v end end
  if #others > 0 then st.pred = rng:choice(others) end
  if multistep_scales[st.scale] then st.scale = nil end
  return "pred"
end

mutations.points = function(self, p, rng)
  -- only steps with a derivative have points to choose
  local cands = {}
  for s, st in ipairs(p.steps) do if (st.order or 1) >= 2 then cands[#cands + 1] = s end end
  if #cands == 0 then
    local s = rng:int(1, #p.steps)
    if s < 2 then return mutations.order(self, p, rng) end
    p.steps[s].order = 2
    cands = { s }
  end
  local s = rng:choice(cands)
  local st = p.steps[s]
  if st.points and rng:bernoulli(0.3) then
    st.points = nil -- back to the default (the points just before)
  else
    st.points = self:random_points(s, st.order, rng)
  end
  st.base = nil
  if multistep_scales[st.scale] then st.scale = nil end
  return "points"
end

mutations.scale = function(self, p, rng)
  local st = p.steps[pick_step(p, rng)]
  if type(st.scale) == "table" and st.scale.linear and rng:bernoulli(0.6) then
    local c = st.scale.linear + rng:normal() * 0.25 * self.linear_range
    st.scale = { linear = math.min(math.max(c, -self.linear_range), self.linear_range) }
  else
    st.scale = random_scale(self, rng)
  end
  return "scale"
end

mutations.corrector = function(self, p, rng)
  if not self.corrector or #p.steps < 2 then return mutations.scale(self, p, rng) end
  local st = p.steps[rng:int(1, #p.steps - 1)]
  st.corrector = not st.corrector or nil
  if multistep_scales[st.scale] then st.scale = nil end
  return "corrector"
end

mutations.eta = function(self, p, rng)
  if not self.eta then return mutations.pred(self, p, rng) end
  local st = p.steps[pick_step(p, rng)]
  st.eta = rng:choice(self.eta)
  if multistep_scales[st.scale] then st.scale = nil end
  return "eta"
end

mutations.step = function(self, p, rng)
  local s = pick_step(p, rng)
  p.steps[s] = self:random_step(s, #p.steps, rng)
  return "step"
end

function Space:mutate_step_field(p, rng) return mutations.order(self, p, rng) end

-- Mutation kinds and their weights.
M.mutation_weights = {
  { "move", 4 }, { "insert_delete", 2 }, { "order", 2 }, { "pred", 1.5 }, { "points", 1.5 }, { "scale", 2 },
  { "corrector", 1.5 }, { "step", 1 }, { "eta", 1 }, { "analytic", 0.7 }, { "move_end", 1 },
}

local function pick_mutation(self, rng)
  local list = {}
  local total = 0
  for _, kw in ipairs(M.mutation_weights) do
    local k, w = kw[1], kw[2]
    if (k == "eta" and not self.eta) or (k == "analytic" and not self.analytic) or (k == "move_end" and not self.free_end) or
      (k == "corrector" and not self.corrector) then
      w = 0
    end
    if w > 0 then list[#list + 1] = { k, w }; total = total + w end
  end
  local u, acc = rng:uniform() * total, 0
  for _, kw in ipairs(list) do
    acc = acc + kw[2]
    if u < acc then return kw[1] end
  end
  return list[#list][1]
end

-- sp:mutate(p, rng[, kind]) -> new plan, kind.  Retries until the plan changes (a mutation
-- may be undone by the repair, e.g. a scale change on a first-order step).
function Space:mutate(p, rng, kind)
  local key0 = self:key(p)
  local q, used
  for _ = 1, 20 do
    q = copy(p)
    q.name = nil
    used = kind or pick_mutation(self, rng)
    used = mutations[used](self, q, rng) or used
    q = self:repair(q)
    if q then
      q = self:canonical(q)
      if self:key(q) ~= key0 then return q, used end
    end
  end
  -- a fresh random step as the last resort
  q = copy(p)
  q.name = nil
  mutations.step(self, q, rng)
  q = self:canonical(assert(self:repair(q)))
  return q, "step"
end

-- sp:crossover(a, b, rng) -> child.  With grids of the same length: per-step decisions taken
-- from either parent (uniform crossover) over either parent's grid or a splice (a's grid and
-- steps up to a cut, b's after it).  Parents of different lengths (analytic flag) give a
-- mutated copy of one of them.
function Space:crossover(a, b, rng)
  if #a.times ~= #b.times then
    local src = rng:bernoulli(0.5) and a or b
    return self:mutate(src, rng)
  end
  local c
  if rng:bernoulli(0.5) then
    -- uniform: per-step decisions, and a per-point choice of time (sorted and repaired)
    c = { times = {}, steps = {}, analytic = a.analytic }
    for i = 1, #a.times do c.times[i] = rng:bernoulli(0.5) and a.times[i] or b.times[i] end
    for s = 1, #a.steps do c.steps[s] = copy(rng:bernoulli(0.5) and a.steps[s] or b.steps[s]) end
    table.sort(c.times, function(x, y) return x > y end)
  else
    local cut = rng:int(1, #a.steps)
    c = { times = {}, steps = {}, analytic = a.analytic }
    for i = 1, #a.times do c.times[i] = i <= cut and a.times[i] or b.times[i] end
    for s = 1, #a.steps do c.steps[s] = copy(s <= cut and a.steps[s] or b.steps[s]) end
  end
  -- equal grid lengths and NFE imply equal analytic flags
  c = self:repair(c)
  if not c then return self:mutate(a, rng) end
  return self:canonical(c)
end

-- sp:grown(p[, fracs]) -> plans of this space made from a plan with one evaluation less: one
-- point inserted into each gap of p's grid (at the fractions `fracs` of the gap in lambda,
-- default {0.5, 0.1}), the new point's step first order.  Seeds a search at a larger NFE with
-- the result of a smaller one.
function Space:grown(p, fracs)
  local out, keys = {}, {}
  for g = 1, #p.times - 1 do
    for _, frac in ipairs(fracs or { 0.5, 0.1 }) do
      local q = copy(p)
      q.name = nil
      local lo, hi = self:lambda(q.times[g]), self:lambda(q.times[g + 1])
      insert_point(q, g + 1, t_of(self, lo + (hi - lo) * frac), { pred = "data", order = 1 })
      q = self:repair(q)
      if q and self:check(q) then
        q = self:canonical(q)
        local k = self:key(q)
        if not keys[k] then keys[k] = true; out[#out + 1] = q end
      end
    end
  end
  return out
end

------------------------------------------------------------------------------------------
-- Canonical form and keys: the defaults are dropped, times kept at full precision, so two
-- plans with the same decisions have the same key.

function Space:canonical(p)
  local q = { times = {}, steps = {}, name = p.name, analytic = p.analytic or nil }
  for i, t in ipairs(p.times) do q.times[i] = t end
  for s, st in ipairs(p.steps) do
    local c = {}
    c.base = st.base
    c.pred = st.pred or "data"
    c.order = st.order or 1
    c.points = st.points and copy(st.points) or nil
    c.scale = copy(st.scale)
    c.corrector = st.corrector or nil
    c.eta = (st.eta and st.eta ~= 0) and st.eta or nil
    q.steps[s] = c
  end
  return q
end

function Space:key(p)
  local q = { times = p.times, steps = p.steps, analytic = p.analytic or nil }
  return json.encode(q)
end
M.key = function(p) return json.encode({ times = p.times, steps = p.steps, analytic = p.analytic or nil }) end

------------------------------------------------------------------------------------------
-- Features for the predictor: one vector of step_dim numbers per step.

local function clamp(x, lo, hi) return math.min(math.max(x, lo), hi) end

function Space:encode(p)
  local out = {}
  local n = #p.steps
  local lam = {}
  for i, t in ipairs(p.times) do lam[i] = self:lambda(t) end
  local function nl(l) return (l - self.lam_start) / self.lam_range end
  for s, raw in ipairs(p.steps) do
    local st = plan_mod.normalize_step(raw, s)
    local v = {}
    local h = lam[s + 1] - lam[st.base]
    v[1] = nl(lam[s])
    v[2] = nl(lam[s + 1])
    v[3] = h / self.lam_range * n -- relative step size
    v[4] = st.pred == "data" and 1 or 0
    for k = 1, 4 do v[4 + k] = (math.min(st.order, 4) == k) and 1 or 0 end
    v[9] = (s - st.base) / 2
    -- the derivative points as lambda distances in units of the step
    local r1, r2 = 0, 0
    if st.points[1] then r1 = clamp((lam[st.base] - lam[st.points[1]]) / h, 0, 4) / 4 end
    if st.points[2] then r2 = clamp((lam[st.base] - lam[st.points[2]]) / h, 0, 4) / 4 end
    v[10], v[11] = r1, r2
    v[12] = raw.points and 1 or 0 -- non-default points
    local sc = st.scale
    local si = type(sc) == "table" and (sc.linear and 5 or 1) or scale_index[sc] or 1
    for k = 1, 5 do v[12 + k] = (si == k) and 1 or 0 end
    v[18] = type(sc) == "table" and sc.linear or 0
    v[19] = st.corrector and 1 or 0
    v[20] = st.eta or 0
    v[21] = (s == 1 and p.analytic) and 1 or 0
    v[22] = s / n
    v[23] = (sc == "deis" or sc == "ipndm") and 1 or 0
    v[24] = 1 -- the step exists (padding rows are zero)
    out[s] = v
  end
  return out
end

-- A flat vector: the per-step vectors of the first max_steps steps, zero-padded.
function Space:features(p)
  local enc = self:encode(p)
  local out = {}
  for s = 1, self.max_steps do
    local v = enc[s]
    for k = 1, self.step_dim do out[#out + 1] = v and v[k] or 0 end
  end
  return out
end

function Space:feature_dim() return self.max_steps * self.step_dim end

------------------------------------------------------------------------------------------
-- The named solvers at this NFE, as plans on the space's ends, over three spacings.

M.preset_solvers = {
  { "DDIM", "ddim", {} },
  { "DPM-Solver++(2M)", "dpmsolver++_2m", {} },
  { "DPM-Solver++(3M)", "dpmsolver++_3m", {} },
  { "UniPC-bh1", "unipc", { variant = "bh1", order = 2 } },
  { "UniPC-bh2", "unipc", { variant = "bh2", order = 2 } },
  { "UniPC-bh2-3", "unipc", { variant = "bh2", order = 3 } },
  { "DEIS-2", "deis", { order = 2 } },
  { "DEIS-3", "deis", { order = 3 } },
}
M.preset_spacings = { "logSNR", "time_uniform", "time_quadratic" }

function Space:presets(spacings)
  local out = {}
  for _, sp in ipairs(spacings or M.preset_spacings) do
    for _, s in ipairs(M.preset_solvers) do
      local o = { schedule = self.schedule, steps = self.nfe, spacing = sp, t_start = self.t_start, t_end = self.t_end }
      for k, v in pairs(s[3]) do o[k] = v end
      local ok, p
      if s[2] == "deis" then
        ok, p = pcall(plan_mod.deis, o)
      else
        ok, p = pcall(plan_mod.build, s[2], o)
      end
      if ok and p and #p.times == self.nfe + 1 then
        p.times[1] = self.t_start
        p.times[#p.times] = self.free_end and p.times[#p.times] or self.t_end
        p.name = ("%s %s"):format(s[1], sp)
        if self:check(p) then out[#out + 1] = p end
      end
    end
  end
  return out
end

return M
