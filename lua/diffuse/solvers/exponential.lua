-- The unified exponential-integrator step, and the solvers of that family (DDIM, DPM-Solver,
-- DPM-Solver++, SDE-DPM-Solver++, UniPC) registered with the sampler as plan builders.
--
-- A step of a plan (see lua/diffuse/plan.lua and docs/plans.md) goes from point s to point
-- s + 1 of the plan's grid.  With lambda = log(alpha / sigma), h = lambda_t - lambda_b (b the
-- base point), and d_k = h^k times the k-th lambda-derivative of the model output m (data
-- prediction x0 or noise prediction eps) at the base, the step is
--   data:   x_t = (sigma_t/sigma_b) e^(-eta h) x_b + alpha_t sum_k H phi_{k+1}(-H) c_k d_k
--             + sigma_t sqrt(1 - e^(-2 eta h)) z,                          H = (1 + eta) h
--   noise:  x_t = (alpha_t/alpha_b) x_b - (1 + eta) sigma_t sum_k h phi_{k+1}(h) c_k d_k
--             + sigma_t sqrt(eta (e^(2h) - 1)) z
-- (d_0 = m_b, c_0 = 1, c_k the derivative scaling), where phi_k are the exponential-integrator
-- functions phi_k(z) = sum_n z^n / (n + k)!.  The derivatives d_1..d_p come from the model
-- outputs at the step's points through a Vandermonde solve in r_i = (lambda_i - lambda_b) / h:
--   m_i - m_b = sum_k d_k r_i^k / k!.
-- Everything is linear in x_b and the buffered model outputs, so the coefficients are
-- computed once per step in double and applied with one lincomb.
local core = require("diffuse.core")
local sampler = require("diffuse.sampler")
local plan_mod = require("diffuse.plan")
local predict = require("diffuse.predict")

local lincomb = core.lincomb
local exp, abs, sqrt = math.exp, math.abs, math.sqrt

local M = {}

local function expm1(x)
  if abs(x) < 1e-5 then return x + x * x / 2 + x * x * x / 6 end
  return exp(x) - 1
end
M.expm1 = expm1

-- phi_1(z) .. phi_n(z) (phi_0 = e^z).  Series for |z| < 1 (the recursion loses digits there),
-- the recursion phi_{k+1} = (phi_k - 1/k!) / z otherwise.
function M.phis(z, n)
  local out = {}
  if abs(z) < 1 then
    for k = 1, n do
      local term, fact = 1, 1
      for j = 2, k do fact = fact * j end
      term = 1 / fact
      local sum = term
      for m = 1, 40 do
        term = term * z / (m + k)
        sum = sum + term
        if abs(term) < 1e-18 * abs(sum) then break end
      end
      out[k] = sum
    end
  else
    local prev, fact = expm1(z) / z, 1
    out[1] = prev
    for k = 2, n do
      prev = (prev - 1 / fact) / z
      fact = fact * k
      out[k] = prev
    end
  end
  return out
end

-- Inverse of a small dense matrix (Gauss-Jordan, partial pivoting), in double.
local function inverse(A, n)
  local a = {}
  for i = 1, n do
    a[i] = {}
    for j = 1, n do a[i][j] = A[i][j] end
    for j = 1, n do a[i][n + j] = (i == j) and 1 or 0 end
  end
  for c = 1, n do
    local p = c
    for r = c + 1, n do if abs(a[r][c]) > abs(a[p][c]) then p = r end end
    if a[p][c] == 0 then error("plan: singular derivative system (repeated points?)", 0) end
    a[c], a[p] = a[p], a[c]
    local piv = a[c][c]
    for j = 1, 2 * n do a[c][j] = a[c][j] / piv end
    for r = 1, n do
      if r ~= c and a[r][c] ~= 0 then
        local f = a[r][c]
        for j = 1, 2 * n do a[r][j] = a[r][j] - f * a[c][j] end
      end
    end
  end
  local inv = {}
  for i = 1, n do
    inv[i] = {}
    for j = 1, n do inv[i][j] = a[i][n + j] end
  end
  return inv
end
M._inverse = inverse

-- Multipliers c_1..c_p of the derivative terms (see docs/plans.md, "scale").
--   taylor      all 1 (the Taylor expansion)
--   bh1, bh2    with one derivative (p = 1): the UniPC B(h) forms, coefficient B(h)/2 with
--               B = hh (bh1) or e^hh - 1 (bh2); with p >= 2 UniPC solves the full system,
--               which is the Taylor expansion
--   dpmsolver   p = 1: DPM-Solver-2's (e^hh - 1)/2 (= bh2); p = 2: the official multistep
--               DPM-Solver-3 form, whose second-derivative term is half the Taylor one
--   {linear=c}  c_1 = 1 + c h, the others 1
--   {c1, c2..}  explicit multipliers (missing ones are 1)
local function multipliers(scale, p, hh, h)
  local c = {}
  for k = 1, p do c[k] = 1 end
  if p == 0 or scale == nil or scale == "taylor" then return c end
  if type(scale) == "table" then
    if scale.linear ~= nil then
      c[1] = 1 + scale.linear * h
    else
      for k = 1, p do if scale[k] ~= nil then c[k] = scale[k] end end
    end
    return c
  end
  if p == 1 then
    local ph = M.phis(hh, 2)
    if scale == "bh1" then
      c[1] = 1 / (2 * ph[2])
    else -- bh2, dpmsolver
      c[1] = ph[1] / (2 * ph[2])
    end
  elseif p == 2 and scale == "dpmsolver" then
    c[2] = 0.5
  end
  return c
end
M.multipliers = multipliers

-- Coefficients of one exponential-integrator update.
--   pred  "data" | "noise";  b, t: schedule points (alpha, sigma, lambda) of base and target;
--   lams: lambdas of the derivative points;  scale, eta as in the plan.
-- Returns {x = coef of x_b, m = {coef of m_b, coef of m_point1, ...}, z = coef of the noise}.
-- A target with sigma = 0 (lambda = +inf) takes the h -> inf limit at first order: the
-- derivative terms have no finite limit (their coefficients grow like h^k) and are dropped.
function M.coefficients(pred, b, t, lams, scale, eta)
  eta = eta or 0
  local p = #lams
  if scale == "deis" or scale == "ipndm" then
    -- Their own weights over the eps at the base and the points before it (newest first);
    -- DEIS's weights include the exact limit for a target with sigma = 0.
    local deis = require("diffuse.solvers.deis")
    local k = p + 1
    local arr = { [k] = b, [k + 1] = t }
    for j = 1, p do arr[k - j] = { alpha = 1, sigma = math.exp(-lams[j]), lambda = lams[j] } end
    local w = (scale == "deis" and deis.deis_weights or deis.ipndm_weights)(arr, k, k)
    if w.x0 then error(("a %s plan step cannot start at alpha = 0"):format(scale), 2) end
    return { x = w.x, m = w.eps, z = 0 }
  end
  local m = {}
  for i = 1, p + 1 do m[i] = 0 end
  if not (t.sigma > 0) then
    if pred == "data" then
      m[1] = t.alpha
      return { x = 0, m = m, z = 0 }
    end
    local E = t.alpha * b.sigma / b.alpha -- lim sigma_t e^h
    m[1] = -(1 + eta) * E
    return { x = t.alpha / b.alpha, m = m, z = sqrt(eta) * E }
  end
  local h = t.lambda - b.lambda
  local cx, hh, outer, cz
  if pred == "data" then
    local H = (1 + eta) * h
    hh = -H
    cx = t.sigma / b.sigma * exp(-eta * h)
    outer = t.alpha * H            -- A_k = alpha_t H phi_{k+1}(-H)
    cz = (eta > 0) and t.sigma * sqrt(-expm1(-2 * eta * h)) or 0
  else
    hh = h
    cx = t.alpha / b.alpha
    outer = -(1 + eta) * t.sigma * h -- A_k = -(1+eta) sigma_t h phi_{k+1}(h)
    cz = (eta > 0) and t.sigma * sqrt(eta * expm1(2 * h)) or 0
  end
  local ph = M.phis(hh, p + 1)
  local mult = multipliers(scale, p, hh, h)
  m[1] = outer * ph[1]
  if p > 0 then
    local V = {}
    for i = 1, p do
      local r = (lams[i] - b.lambda) / h
      V[i] = {}
      local pw, fact = 1, 1
      for k = 1, p do
        pw = pw * r
        fact = fact * k
        V[i][k] = pw / fact
      end
    end
    local Vi = inverse(V, p)
    for i = 1, p do
      local c = 0
      for k = 1, p do c = c + outer * ph[k + 1] * mult[k] * Vi[k][i] end
      m[i + 1] = c
      m[1] = m[1] - c
    end
  end
  return { x = cx, m = m, z = cz }
end

------------------------------------------------------------------------------------------
-- Executing a plan in a sampler state.

-- Precomputes, for every step, the coefficients of the predictor (and corrector), and for
-- every point the last step that needs its x or model outputs (buffers are dropped after).
local function prepare(st, p)
  local times = p.times
  local pts = {}
  for i, t in ipairs(times) do pts[i] = st:point(t) end
  local steps = {}
  local last_x, last_m, need = {}, {}, {}
  for s, raw in ipairs(p.steps) do
    local step = plan_mod.normalize_step(raw, s)
    local pred = step.pred
    local lams = {}
    for i, j in ipairs(step.points) do lams[i] = pts[j].lambda end
    local c = M.coefficients(pred, pts[step.base], pts[s + 1], lams, step.scale, step.eta)
    local cc
    if step.corrector then
      local lams2 = {}
      for i, l in ipairs(lams) do lams2[i] = l end
      lams2[#lams2 + 1] = pts[s + 1].lambda
      cc = M.coefficients(pred, pts[step.base], pts[s + 1], lams2, step.scale, step.eta)
    end
    steps[s] = { step = step, c = c, cc = cc }
    last_x[step.base] = s
    local key = pred == "data" and "x0" or "eps"
    for _, j in ipairs({ step.base, table.unpack(step.points) }) do
      last_m[j] = math.max(last_m[j] or 0, s)
      need[j] = need[j] or {}
      need[j][key] = true
    end
    if step.corrector then
      last_m[s + 1] = math.max(last_m[s + 1] or 0, s)
      need[s + 1] = need[s + 1] or {}
      need[s + 1][key] = true
    end
    if step.dc then
      local ids, w = M.dc_weights(times, s, step.dc)
      steps[s].dc = { ids = ids, w = w }
      for _, j in ipairs(ids) do
        last_m[j] = math.max(last_m[j] or 0, s)
        need[j] = need[j] or {}
        need[j][key] = true
      end
    end
  end
  return { steps = steps, last_x = last_x, last_m = last_m, need = need, pts = pts }
end

-- DC-Solver's dynamic compensation at step s (arXiv 2409.03755): the model output of point s
-- is replaced by the Lagrange polynomial through the outputs of points s, s-1, s-2 (those
-- that exist; in t, as the paper) evaluated at t_{s-1} + ratio (t_s - t_{s-1}).  Returns the
-- point indices and their weights (ratio 1 gives the output of point s itself).
M.dc_order = 2
function M.dc_weights(times, s, ratio)
  local ids = {}
  for j = s, math.max(1, s - M.dc_order), -1 do ids[#ids + 1] = j end
  local tt = times[s - 1] + ratio * (times[s] - times[s - 1])
  local w = {}
  for a, i in ipairs(ids) do
    local c = 1
    for b, j in ipairs(ids) do
      if a ~= b then c = c * (tt - times[j]) / (times[i] - times[j]) end
    end
    w[a] = c
  end
  return ids, w
end

-- Evaluates the model at point j (x given) and buffers what later steps need.  When the
-- model predicts x0 or eps natively, the other quantity is not buffered: a term in it is
-- rewritten with the native output and the x the model saw (eps = (x - alpha x0) / sigma,
-- x0 = (x - sigma eps) / alpha), so the cancellation happens in lincomb's double
-- accumulation instead of in a float32 tensor.
local function evaluate(st, j, x)
  local ex = st._ei
  local native = ex.native
  local x0, eps
  if j == 1 and ex.analytic then
    -- The analytic first step: the Gaussian approximation's closed form, no network call and
    -- no NFE.  Its output is x0 whatever the network predicts, so point 1 is x0-native.
    local p = ex.pts[1]
    local out = ex.analytic(x, p, st.cond)
    x0 = predict.to_x0_eps(ex.analytic_predicts, out, x, p, "x0")
    native = "x0"
  else
    -- An x0-native model's eps is never used (terms in eps are rewritten in x0 and x), so the
    -- conversion is skipped; an eps-native model still yields x0 for state.x0 (the callback's).
    local raw = st.plan.steps[j]
    x0, eps = st:eval(x, st.plan.times[j], native == "x0" and "x0" or nil, raw and raw.skip and raw)
  end
  st.mem.done[j] = true
  local need = ex.need[j]
  if need then
    local p = ex.pts[j]
    if need.x0 then
      if native == "eps" and p.alpha > 0 then
        st.mem.eps[j], st.mem.xe[j] = eps, x
      else
        st.mem.x0[j] = x0
      end
    end
    if need.eps then
      if native == "x0" and p.sigma > 0 then
        st.mem.x0[j], st.mem.xe[j] = x0, x
      elseif eps == nil then
        error(("plan: step needs a noise prediction at point %d, where sigma = 0"):format(j), 0)
      else
        st.mem.eps[j] = eps
      end
    end
  end
  st.x0 = x0
end

-- Adds v times the model output of point j (x0 if data, else eps) as terms of add(tensor, coef):
-- the compensated output when DC replaced it, else the buffered one, converted from the native
-- prediction (and the x the model saw) when only that is buffered.
local function add_output(ex, mem, add, j, v, data)
  local dc = mem.dc[j]
  if dc and dc.data == data then add(dc.t, v); return end
  local p = ex.pts[j]
  if data then
    if mem.x0[j] then add(mem.x0[j], v)
    else -- x0 = (xe - sigma eps) / alpha
      add(mem.xe[j], v / p.alpha); add(mem.eps[j], -v * p.sigma / p.alpha)
    end
  else
    if mem.eps[j] then add(mem.eps[j], v)
    else -- eps = (xe - alpha x0) / sigma
      add(mem.xe[j], v / p.sigma); add(mem.x0[j], -v * p.alpha / p.sigma)
    end
  end
end

-- A list of (tensor, coefficient) terms for one lincomb: add(t, v) appends t or adds v to the
-- coefficient it already has (so a tensor used twice is read once); zero terms are skipped.
local function terms()
  local ts, cs, slot = {}, {}, {}
  local function add(t, v)
    if v == 0 then return end
    local k = slot[t]
    if k then cs[k] = cs[k] + v
    else
      k = #ts + 1
      ts[k], cs[k], slot[t] = t, v, k
    end
  end
  return ts, cs, add
end

-- x_new = c.x x_base + sum_i c.m[i] m_{ids[i]} (+ c.z z), m the step's prediction kind, with
-- terms on the same tensor merged.
local function apply(st, s, c, step, x_base, z)
  local ex, mem = st._ei, st.mem
  local data = step.pred == "data"
  local ts, cs, add = terms()
  add(x_base, c.x)
  local ids = { step.base, table.unpack(step.points) }
  if #c.m > #ids then ids[#ids + 1] = s + 1 end
  for i, j in ipairs(ids) do
    local v = c.m[i]
    if v ~= 0 then add_output(ex, mem, add, j, v, data) end
  end
  if z then add(z, c.z) end
  if #ts == 0 then return x_base:mul(0) end
  return lincomb(ts, cs)
end

-- DC: point s's output (of the step's prediction kind) becomes one lincomb of the outputs of
-- points s, s-1, s-2 (compensated ones as they are); it replaces the output for every later
-- use of that kind, as in DC-Solver.
local function compensate(st, s, dc, data)
  local ex, mem = st._ei, st.mem
  local ts, cs, add = terms()
  for a, j in ipairs(dc.ids) do add_output(ex, mem, add, j, dc.w[a], data) end
  mem.dc[s] = { data = data, t = lincomb(ts, cs) }
end

local function step_fn(st)
  local ex = st._ei
  local s = st.i + 1
  local e = ex.steps[s]
  local step = e.step
  local mem = st.mem
  if not mem.done[s] then evaluate(st, s, st.x) end
  if e.dc then compensate(st, s, e.dc, step.pred == "data") end
  if (ex.last_x[s] or 0) > s then mem.x[s] = st.x end
  local x_base = (step.base == s) and st.x or mem.x[step.base]
  local z
  if e.c.z ~= 0 or (e.cc and e.cc.z ~= 0) then z = st:draw() end
  local x = apply(st, s, e.c, step, x_base, z)
  if e.cc then
    evaluate(st, s + 1, x)
    x = apply(st, s, e.cc, step, x_base, z)
  end
  -- drop the buffers no later step uses
  for _, key in ipairs({ "x0", "eps", "xe", "dc" }) do
    for j in pairs(mem[key]) do
      if (ex.last_m[j] or 0) <= s then mem[key][j] = nil end
    end
  end
  for j in pairs(mem.x) do
    if (ex.last_x[j] or 0) <= s then mem.x[j] = nil end
  end
  st.x = x
end

-- Sets the DC ratio of step s of an installed plan (the step must have been installed with a
-- dc field, which keeps the buffers it needs alive).  Clones share the prepared coefficients,
-- so this changes the step for every clone of st: diffuse.search.dcsolver tries ratios on
-- clones one after another.
function M.set_dc(st, s, ratio)
  local e = st._ei and st._ei.steps[s]
  if not (e and e.dc) then error(("set_dc: step %d of the installed plan has no dc field"):format(s), 2) end
  local ids, w = M.dc_weights(st.plan.times, s, ratio)
  e.dc = { ids = ids, w = w }
end

-- Installs plan p in state st (validates it first).
local function install(st, p, analytic)
  local ok, err = plan_mod.validate(p)
  if not ok then error("sample: " .. err, 0) end
  st.plan = p
  st.times = p.times
  st.n = #p.times - 1
  st.mem = { x = {}, x0 = {}, eps = {}, xe = {}, done = {}, dc = {} }
  st._ei = prepare(st, p)
  st._ei.native = (st.predicts == "x0" or st.predicts == "eps") and st.predicts or nil
  if p.analytic then
    -- the option first, then the model's own (read only now: loaded denoisers build theirs lazily)
    local a = analytic or (type(st.model) == "table" and st.model.analytic) or nil
    if a == nil or a == false then
      error("sample: the plan has analytic = true but there is no analytic model: pass analytic = <a diffuse "
        .. "model> (e.g. diffuse.models.gaussian(data)) or use a model that has an 'analytic' field", 0)
    end
    local kind = type(a) == "table" and a.predicts or "x0"
    if not predict.kinds[kind] then error(("sample: the analytic model predicts '%s', an unknown kind"):format(tostring(kind)), 0) end
    st._ei.analytic, st._ei.analytic_predicts = a, kind
  end
end
M.install = install

------------------------------------------------------------------------------------------
-- Registration: the "plan" solver and the named builders.

local function grid_args(st)
  local g = st.grid_opts or {}
  return {
    schedule = st.schedule, steps = g.steps, spacing = g.spacing, t_start = g.t_start,
    t_end = g.t_end, _grid = st.times,
  }
end

sampler.register("plan", {
  family = "exponential", stochastic = true, own_grid = true,
  options = { plan = false, analytic = false },
  setup = function(st)
    local p = st.opts.plan
    if not p then error("sample: solver 'plan' needs the option plan = <a plan table>", 0) end
    if st.grid_opts and st.grid_opts.steps then
      error("sample: a plan carries its own times; do not pass 'steps' with solver 'plan'", 0)
    end
    local a = st.opts.analytic
    if a and type(a) ~= "function" and type(a) ~= "table" then
      error(("sample: option 'analytic' must be a diffuse model (a Gaussian approximation), got %s"):format(type(a)), 0)
    end
    install(st, p, a or nil)
  end,
  step = step_fn,
})

-- name -> {builder, fixed options, sampler options with defaults, stochastic}
local named = {
  ddim = { "ddim", {}, { eta = 0.0, denoise_to_zero = false }, true },
  dpmsolver = { "dpmsolver", { algorithm = "dpmsolver" },
    { method = "multistep", order = 2, solver_type = "dpmsolver", lower_order_final = true,
      denoise_to_zero = false, euler_at_final = false }, false },
  ["dpmsolver++"] = { "dpmsolver", { algorithm = "dpmsolver++" },
    { method = "multistep", order = 2, solver_type = "dpmsolver", lower_order_final = true,
      denoise_to_zero = false, euler_at_final = false }, false },
  ["sde_dpmsolver++_2m"] = { "dpmsolver", { algorithm = "dpmsolver++", method = "multistep", order = 2 },
    { eta = 1.0, solver_type = "dpmsolver", lower_order_final = true, denoise_to_zero = false,
      euler_at_final = false }, true },
  unipc = { "unipc", {},
    { variant = "bh1", order = 2, prediction = "data", lower_order_final = true,
      disable_corrector = false, denoise_to_zero = false }, false },
}
for _, alg in ipairs({ "dpmsolver", "dpmsolver++" }) do
  for _, v in ipairs({ { "2m", "multistep", 2 }, { "3m", "multistep", 3 }, { "2s", "singlestep", 2 },
    { "3s", "singlestep", 3 } }) do
    named[alg .. "_" .. v[1]] = { "dpmsolver", { algorithm = alg, method = v[2], order = v[3] },
      { solver_type = "dpmsolver", lower_order_final = true, denoise_to_zero = false,
        euler_at_final = false }, false }
  end
end
M.named = named

for name, def in pairs(named) do
  sampler.register(name, {
    family = "exponential", stochastic = def[4], options = def[3],
    setup = function(st)
      local o = grid_args(st)
      for k, v in pairs(def[2]) do o[k] = v end
      for k in pairs(def[3]) do o[k] = st.opts[k] end
      local ok, p = pcall(plan_mod[def[1]], o)
      if not ok then error("sample: " .. tostring(p):gsub("^[^:]*:%d+: ", ""), 0) end
      install(st, p)
    end,
    step = step_fn,
  })
end

return M
