-- DC-Solver (Zhao et al., "DC-Solver: Improving Predictor-Corrector Diffusion Sampler via
-- Dynamic Compensation", arXiv 2409.03755): UniPC's predictor-corrector, with the model output
-- of each point replaced by a Lagrange interpolation of the recent outputs at a compensated
-- time (the plan field `dc`, docs/plans.md).  The per-step ratios are fitted greedily, step by
-- step, on a few trajectories against a fine reference trajectory from the same noise; the
-- cascade polynomial regression (CPR) predicts ratios for NFEs (and guidance scales) that were
-- not fitted.
--
--   fit   = dcsolver.fit{model, schedule, nfe, trajectories = 10, ...}   -> plain data
--   p     = dcsolver.plan(fit)  or  dcsolver.plan{schedule, nfe, ratios = {...}}  -> a plan
--   cpr   = dcsolver.cpr{fits = {fit, ...}}                              -> plain data
--   ratios = dcsolver.predict(cpr, nfe [, guidance])
--   xs    = dcsolver.reference{model, schedule, times, x, substeps = 20}  -> x at every time
local core = require("diffuse.core")
local util = require("diffuse.util")
local plan_mod = require("diffuse.plan")
local sampler = require("diffuse.sampler")
local ex = require("diffuse.solvers.exponential")

local M = {}
local F = "search.dcsolver"

local function fail(fname, msg, level) util.fail(fname, msg, (level or 1) + 1) end

local check_int = util.check_int

-- The fine reference: each interval of `times` split into `substeps` logSNR-uniform steps of a
-- third-order multistep DPM-Solver++, started from x.  Returns {x at times[1], x at times[2], ...}.
function M.reference(o)
  local FN = F .. ".reference"
  o = util.check_options(FN, o, { model = true, schedule = true, times = true, x = true, substeps = true, cond = true,
    predicts = true }, 2)
  if o.model == nil then fail(FN, "'model' is required", 2) end
  if not util.is_tensor(o.x) then fail(FN, "'x' must be the starting tensor", 2) end
  if type(o.times) ~= "table" or #o.times < 2 then fail(FN, "'times' must be a list of at least 2 times", 2) end
  local sched = o.schedule or o.model.schedule
  -- default: at least 20 steps per interval and 200 in all (a reference far more accurate
  -- than the few-step solvers it is fitted for: about 1e-4 RMS on the test mixtures)
  local k = check_int(FN, "substeps", o.substeps or math.max(20, math.ceil(200 / (#o.times - 1))), 1, 2)
  local grid = require("diffuse.grid")
  local fine, at = { o.times[1] }, { [1] = 1 }
  for i = 1, #o.times - 1 do
    local seg
    if sched:sigma(o.times[i + 1]) > 0 then
      seg = grid.times(sched, { spacing = "logSNR", steps = k, t_start = o.times[i], t_end = o.times[i + 1] })
    else -- logSNR cannot reach sigma = 0: uniform in t for the last interval
      seg = {}
      for j = 0, k do seg[j + 1] = o.times[i] + (o.times[i + 1] - o.times[i]) * j / k end
    end
    for j = 2, #seg - 1 do fine[#fine + 1] = seg[j] end
    fine[#fine + 1] = o.times[i + 1]
    at[#fine] = i + 1
  end
  local p = plan_mod.dpmsolver({ schedule = sched, times = fine, algorithm = "dpmsolver++", order = 3,
    lower_order_final = false })
  local xs = { o.x }
  sampler.sample({ model = o.model, schedule = sched, predicts = o.predicts, cond = o.cond, x = o.x, solver = "plan",
    plan = p, callback = function(s)
      local i = at[s.i + 1]
      if i then xs[i] = s.x end
    end })
  return xs
end

-- The starting noise of `trajectories` rows, as sample{shape, seed} draws it.
local function start_noise(sched, t0, n, shape, seed)
  local full = { n }
  for i, d in ipairs(shape) do full[i + 1] = d end
  return core.randn(full, { seed = seed, draw = 0 }):mul(sched:sigma(t0))
end

local function mse(a, b)
  local d = a:sub(b)
  return d:mul(d):sum() / d:numel()
end

local fit_options = { model = true, schedule = true, nfe = true, trajectories = true, seed = true, shape = true,
  dim = true, cond = true, predicts = true, variant = true, order = true, spacing = true, t_start = true, t_end = true,
  substeps = true, range = true, iters = true, guidance = true, progress = true, times = true, objective = true,
  passes = true }

-- The UniPC plan (predictor order `order`, corrector on every step but the last, UniPC's
-- lower-order warm-up and final steps) with the given ratios (ratios[s] for step s; nil or
-- missing: no compensation).
local function build_plan(FN, o, ratios, level)
  local sched = o.schedule
  local args = { schedule = sched, variant = o.variant or "bh2", order = o.order or 2 }
  if o.times then args.times = o.times
  else
    args.steps, args.spacing, args.t_start, args.t_end = o.nfe, o.spacing or "logSNR", o.t_start, o.t_end
  end
  local ok, p = pcall(plan_mod.unipc, args)
  if not ok then fail(FN, tostring(p):gsub("^[^:]*:%d+: ", ""), level + 1) end
  for s, r in pairs(ratios or {}) do
    if s >= 2 and s <= #p.steps and r ~= nil then p.steps[s].dc = r end
  end
  p.name = ("dc-solver (unipc %s order %d)"):format(args.variant, args.order)
  return p
end

-- dcsolver.fit{...}: the per-step ratios, fitted greedily: at step s (from step 2 on), the
-- ratio that brings x after the step (predictor, the compensated outputs and the corrector)
-- closest in mean square to the reference trajectory, by a grid over `range` then a
-- golden-section search; then the step is taken with it and the next step is fitted.
function M.fit(o)
  local FN = F .. ".fit"
  o = util.check_options(FN, o, fit_options, 2)
  if o.model == nil then fail(FN, "'model' is required", 2) end
  local sched = o.schedule or (type(o.model) == "table" and o.model.schedule)
  if sched == nil then fail(FN, "'schedule' is required", 2) end
  o.schedule = sched
  if o.times == nil then check_int(FN, "nfe", o.nfe, 2, 2) end
  local n = check_int(FN, "trajectories", o.trajectories or 10, 1, 2)
  local shape = o.shape or { o.dim }
  if type(shape) ~= "table" or #shape < 1 then fail(FN, "give 'dim' or the row 'shape' (e.g. {784})", 2) end
  local range = o.range or { 0.5, 1.5 }
  if type(range) ~= "table" or not (type(range[1]) == "number" and type(range[2]) == "number" and range[1] < range[2]) then
    fail(FN, "'range' must be {lo, hi} with lo < hi", 2)
  end
  local iters = check_int(FN, "iters", o.iters or 12, 0, 2)
  local seed = o.seed or 1
  local init = {}
  local p0 = build_plan(FN, o, nil, 2)
  for s = 2, #p0.steps do init[s] = 1 end
  local p = build_plan(FN, o, init, 2)
  local N = #p.steps
  local x = start_noise(sched, p.times[1], n, shape, seed)
  local ref = M.reference({ model = o.model, schedule = sched, times = p.times, x = x, substeps = o.substeps,
    cond = o.cond, predicts = o.predicts })
  local st = sampler.new({ model = o.model, schedule = sched, predicts = o.predicts, cond = o.cond, x = x, solver = "plan",
    plan = p })
  local ratios, losses, plain = {}, {}, {}
  local objective = o.objective or "final"
  if objective ~= "step" and objective ~= "final" then
    fail(FN, ("objective = %s; valid: step, final"):format(tostring(objective)), 2)
  end
  -- "step": x right after the step against the reference there (the paper's);
  -- "final": x at the end of the run (the later steps with their current ratios).
  local final = objective == "final"
  local function loss_at(s, r)
    ex.set_dc(st, s, r)
    local c = st:clone()
    c:step()
    if final then
      while not c:done() do c:step() end
      return mse(c.x, ref[N + 1])
    end
    return mse(c.x, ref[s + 1])
  end
  local passes = final and check_int(FN, "passes", o.passes or 2, 1, 2) or 1
  local bar = o.progress and require("diffuse.progress").new({ total = N * passes, unit = "steps",
    label = type(o.progress) == "string" and o.progress or ("dc-solver fit nfe " .. N) })
  local start = st
  for pass = 1, passes do
  st = start:clone()
  for s = 1, N do
    if s >= 2 then
      -- a grid, then golden-section around its best point
      local lo, hi = range[1], range[2]
      local G = 8
      local best_r, best_l = 1, loss_at(s, 1)
      plain[s] = best_l
      for g = 0, G do
        local r = lo + (hi - lo) * g / G
        local l = loss_at(s, r)
        if l < best_l then best_r, best_l = r, l end
      end
      local a, b = math.max(lo, best_r - (hi - lo) / G), math.min(hi, best_r + (hi - lo) / G)
      local phi = (math.sqrt(5) - 1) / 2
      local c1, c2 = b - phi * (b - a), a + phi * (b - a)
      local f1, f2 = loss_at(s, c1), loss_at(s, c2)
      for _ = 1, iters do
        if f1 < f2 then
          b, c2, f2 = c2, c1, f1
          c1 = b - phi * (b - a); f1 = loss_at(s, c1)
        else
          a, c1, f1 = c1, c2, f2
          c2 = a + phi * (b - a); f2 = loss_at(s, c2)
        end
      end
      if f1 < best_l then best_r, best_l = c1, f1 end
      if f2 < best_l then best_r, best_l = c2, f2 end
      ratios[s], losses[s] = best_r, best_l
      ex.set_dc(st, s, best_r)
    end
    st:step()
    if s == 1 then losses[1] = mse(st.x, ref[2]); plain[1] = losses[1] end
    if bar then bar:update((pass - 1) * N + s) end
  end
  end
  if bar then bar:finish() end
  local fitted = {}
  for s = 1, N do fitted[s] = ratios[s] or 1.0 end
  return {
    kind = "dcsolver", nfe = N, ratios = fitted, times = p.times, variant = o.variant or "bh2", order = o.order or 2,
    guidance = o.guidance, trajectories = n, seed = seed, loss = losses, loss_plain = plain,
    final_rms = math.sqrt(mse(st.x, ref[N + 1])),
  }
end

-- dcsolver.plan(fit) or dcsolver.plan{schedule, nfe | times, ratios = {...}, variant, order,
-- spacing, t_start, t_end}: the plan that samples with the ratios.
function M.plan(o)
  local FN = F .. ".plan"
  if type(o) ~= "table" then fail(FN, "expected a fit or an options table", 2) end
  if o.kind == "dcsolver" then
    -- a fit carries its grid; the grid is all the plan builder needs the schedule for
    if type(o.times) ~= "table" or type(o.ratios) ~= "table" then fail(FN, "the fit has no times or ratios", 2) end
    o = { schedule = require("diffuse.schedule").vp_linear(), times = o.times, ratios = o.ratios, variant = o.variant,
      order = o.order }
  end
  o = util.check_options(FN, o, { schedule = true, nfe = true, times = true, ratios = true, variant = true, order = true,
    spacing = true, t_start = true, t_end = true }, 2)
  if o.schedule == nil then fail(FN, "'schedule' is required (with 'nfe', or give 'times')", 2) end
  if type(o.ratios) ~= "table" then fail(FN, "'ratios' must be a list of per-step ratios", 2) end
  local nfe = o.times and #o.times - 1 or o.nfe
  if #o.ratios ~= nfe then fail(FN, ("%d ratios for %s steps"):format(#o.ratios, tostring(nfe)), 2) end
  local r = {}
  for s, v in ipairs(o.ratios) do
    if type(v) ~= "number" then fail(FN, ("ratios[%d] must be a number"):format(s), 2) end
    if s >= 2 then r[s] = v end
  end
  return build_plan(FN, o, r, 2)
end

------------------------------------------------------------------------------------------
-- Cascade polynomial regression: ratio(step s, NFE n, guidance g) as a polynomial in
-- u = s / n whose coefficients are polynomials in n / 10, whose coefficients are polynomials
-- in g / 10 (the paper's cascade).  The model is linear in its coefficients, so one least
-- squares over all fitted ratios finds them all.

local function monomials(deg, u, v, w)
  local out = {}
  for i = 0, deg[1] do
    for j = 0, deg[2] do
      for k = 0, deg[3] do out[#out + 1] = u ^ i * v ^ j * w ^ k end
    end
  end
  return out
end

local function solve_spd(A, b, n)
  local inv = ex._inverse(A, n)
  local x = {}
  for i = 1, n do
    local a = 0
    for j = 1, n do a = a + inv[i][j] * b[j] end
    x[i] = a
  end
  return x
end

-- dcsolver.cpr{fits = {fit, ...}, degree = {step = 2, nfe = 2, guidance = 2}} -> plain data.
-- A fit is a dcsolver.fit result (or {nfe =, ratios =, guidance =}).  The NFE and guidance
-- degrees are capped at (number of distinct values - 1); step 1 (never compensated) is left
-- out.
function M.cpr(o)
  local FN = F .. ".cpr"
  o = util.check_options(FN, o, { fits = true, degree = true }, 2)
  if type(o.fits) ~= "table" or #o.fits < 1 then fail(FN, "'fits' must be a non-empty list of fits", 2) end
  local dg = o.degree or {}
  local nfes, gs = {}, {}
  local rows = {}
  for i, f in ipairs(o.fits) do
    if type(f) ~= "table" or type(f.ratios) ~= "table" then fail(FN, ("fits[%d] has no ratios"):format(i), 2) end
    local nfe = f.nfe or #f.ratios
    local g = f.guidance or 0
    nfes[nfe], gs[g] = true, true
    for s = 2, #f.ratios do rows[#rows + 1] = { s / nfe, nfe / 10, g / 10, f.ratios[s] } end
  end
  local function count(t) local c = 0 for _ in pairs(t) do c = c + 1 end return c end
  local deg = { dg.step or 2, math.min(dg.nfe or 2, count(nfes) - 1), math.min(dg.guidance or 2, count(gs) - 1) }
  local P = (deg[1] + 1) * (deg[2] + 1) * (deg[3] + 1)
  local A, b = {}, {}
  for i = 1, P do A[i] = {}; b[i] = 0; for j = 1, P do A[i][j] = 0 end end
  for _, r in ipairs(rows) do
    local m = monomials(deg, r[1], r[2], r[3])
    for i = 1, P do
      b[i] = b[i] + m[i] * r[4]
      for j = 1, P do A[i][j] = A[i][j] + m[i] * m[j] end
    end
  end
  -- a tiny ridge keeps under-determined fits solvable (few steps at small NFE)
  local tr = 0
  for i = 1, P do tr = tr + A[i][i] end
  for i = 1, P do A[i][i] = A[i][i] + 1e-9 * tr / P end
  local coef = solve_spd(A, b, P)
  local sse = 0
  for _, r in ipairs(rows) do
    local m, v = monomials(deg, r[1], r[2], r[3]), 0
    for i = 1, P do v = v + m[i] * coef[i] end
    sse = sse + (v - r[4]) ^ 2
  end
  return { kind = "dcsolver-cpr", degree = { step = deg[1], nfe = deg[2], guidance = deg[3] }, coefficients = coef,
    rms = math.sqrt(sse / math.max(1, #rows)), points = #rows }
end

-- dcsolver.predict(cpr, nfe [, guidance]) -> ratios (ratio 1 at step 1).
function M.predict(c, nfe, g)
  local FN = F .. ".predict"
  if type(c) ~= "table" or c.kind ~= "dcsolver-cpr" then fail(FN, "expected the result of dcsolver.cpr", 2) end
  check_int(FN, "nfe", nfe, 1, 2)
  local deg = { c.degree.step, c.degree.nfe, c.degree.guidance }
  local out = { 1.0 }
  for s = 2, nfe do
    local m, v = monomials(deg, s / nfe, nfe / 10, (g or 0) / 10), 0
    for i = 1, #m do v = v + m[i] * c.coefficients[i] end
    out[s] = v
  end
  return out
end

return M
