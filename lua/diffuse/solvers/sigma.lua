-- The sigma-space family with k-diffusion semantics: euler (with churn), euler_ancestral,
-- heun, dpm_2, dpm_2_ancestral, lms, dpmpp_2s_ancestral, dpmpp_sde, dpmpp_2m, dpmpp_2m_sde,
-- dpmpp_3m_sde.
--
-- k-diffusion works with x_hat = x0 + sigma_hat * eps and a denoiser D(x_hat, sigma_hat).
-- Every schedule has that view: x_hat = x / alpha(t), sigma_hat = sigma / alpha, and
-- D(x_hat, sigma_hat) is the model's x0 at x = alpha * x_hat, t = t(sigma_hat).  The solvers
-- below write each update in hat space as a linear expression over the tensors at hand
-- (state x's, denoised estimates, noise draws), then fold the 1 / alpha of every x and the
-- alpha of the target time into the coefficients: one fused lincomb per update, and x stays
-- in the schedule's own space.  With the EDM schedule (alpha = 1, sigma = t) the updates are
-- k-diffusion's own.
--
-- Noise: every draw goes through state:draw(), at the points where k-diffusion calls its
-- noise sampler (one draw per step that injects noise, two per step for dpmpp_sde, none on
-- the final step to sigma = 0), so a supplied noise list reproduces k-diffusion exactly.
local core = require("diffuse.core")
local sampler = require("diffuse.sampler")
local schedule = require("diffuse.schedule")

local lincomb = core.lincomb
local expm1 = schedule.expm1
local exp, log, sqrt, min = math.exp, math.log, math.sqrt, math.min

local M = {}

---------------------------------------------------------------------------------------------
-- Linear expressions in hat space: { ts = {tensor, ...}, cs = {coef, ...} }.
-- The same tensor appearing twice is merged (so x_hat and the x_hat inside d = (x_hat - D)/s
-- become one term).

local function term(t, c) return { ts = { t }, cs = { c } } end

-- sum of c_k * e_k for the pairs (e1, c1, e2, c2, ...); a zero coefficient drops its terms.
local function lin(...)
  local args = table.pack(...)
  local out = { ts = {}, cs = {} }
  for k = 1, args.n, 2 do
    local e, c = args[k], args[k + 1]
    if c ~= 0 then
      for j, t in ipairs(e.ts) do
        local found = false
        for m, u in ipairs(out.ts) do
          if rawequal(u, t) then out.cs[m] = out.cs[m] + c * e.cs[j]; found = true; break end
        end
        if not found then
          out.ts[#out.ts + 1] = t
          out.cs[#out.cs + 1] = c * e.cs[j]
        end
      end
    end
  end
  return out
end

-- The own-space tensor alpha * (hat-space expression): one lincomb.
local function emit(e, alpha)
  local ts, cs = {}, {}
  for j, t in ipairs(e.ts) do
    if e.cs[j] ~= 0 then
      ts[#ts + 1] = t
      cs[#cs + 1] = alpha * e.cs[j]
    end
  end
  return lincomb(ts, cs)
end
M._lin, M._term, M._emit = lin, term, emit

-- k-diffusion's to_d: (x_hat - D) / s.
local function to_d(xh, D, s) return lin(xh, 1 / s, term(D, 1), -1 / s) end

---------------------------------------------------------------------------------------------
-- Points in sigma space.

-- The point {t, alpha, sigma_hat, ...} of the current grid index k (1-based into times).
local function grid_point(st, k)
  local p = st:point(st.times[k])
  if p.sigma_hat == math.huge then
    error(("sample: %s needs a finite sigma_hat = sigma / alpha, but alpha is 0 at t = %.6g"):format(
      st.solver.name, p.t), 0)
  end
  return p
end

-- The point whose sigma_hat is sh (an intermediate stage); for EDM t = sh exactly.
local function sigma_point(st, sh)
  return st:point(st.schedule:t_of_sigma_hat(sh))
end

-- Evaluate D at hat-space expression xh with noise level sh: returns D, the own-space x
-- used, and the point.  (xh may already be an own-space tensor: pass x_own.)
local function denoise_at(st, xh, sh)
  local p = sigma_point(st, sh)
  local x = emit(xh, p.alpha)
  return st:eval(x, p.t, "x0"), x, p
end

-- k-diffusion's get_ancestral_step: the lower noise level to step down to and the noise to add.
local function ancestral(s_from, s_to, eta)
  if eta == 0 then return s_to, 0 end
  local up = min(s_to, eta * sqrt(s_to * s_to * (s_from * s_from - s_to * s_to) / (s_from * s_from)))
  local down = sqrt(s_to * s_to - up * up)
  return down, up
end
M.ancestral_step = ancestral

-- The step's two grid points and the hat-space expression of the current x.
local function begin(st)
  local p, q = grid_point(st, st.i + 1), grid_point(st, st.i + 2)
  return p, q, term(st.x, 1 / p.alpha)
end

-- Karras churn (euler, heun, dpm_2): raises the noise level to s * (1 + gamma) when
-- s_tmin <= s <= s_tmax, drawing one normal.  Returns the (possibly new) hat expression of
-- x, the raised level, and D there.
local function churn_and_denoise(st, p, xh)
  local o = st.opts
  local s = p.sigma_hat
  local gamma = 0
  if o.churn > 0 and o.s_tmin <= s and s <= o.s_tmax then
    gamma = min(o.churn / st.n, sqrt(2) - 1)
  end
  if gamma > 0 then
    local shat = s * (gamma + 1)
    local z = st:draw()
    local xr = lin(xh, 1, term(z, 1), o.s_noise * sqrt(shat * shat - s * s))
    local D, x, pr = denoise_at(st, xr, shat)
    return term(x, 1 / pr.alpha), shat, D
  end
  return xh, s, st:eval(st.x, p.t, "x0")
end

local churn_options = { churn = 0.0, s_tmin = 0.0, s_tmax = math.huge, s_noise = 1.0 }
local ancestral_options = { eta = 1.0, s_noise = 1.0 }

local with = require("diffuse.util").merge

local function check_nonneg(st, ...)
  for _, k in ipairs({ ... }) do
    local v = st.opts[k]
    if not (v >= 0) then
      error(("sample: option '%s' of solver %s must be >= 0, got %s"):format(k, st.solver.name, tostring(v)), 0)
    end
  end
end

local function reg(name, def)
  def.family = "sigma"
  def.default_spacing = "karras"
  sampler.register(name, def)
end

---------------------------------------------------------------------------------------------
-- Euler (Karras et al. 2022, Algorithm 2 with Euler steps).

reg("euler", {
  stochastic = false, -- draws noise only with churn > 0
  order = 1, nfe = 1,
  options = churn_options,
  setup = function(st) check_nonneg(st, "churn", "s_noise") end,
  step = function(st)
    local p, q, xh = begin(st)
    local xr, shat, D = churn_and_denoise(st, p, xh)
    local r = q.sigma_hat / shat
    st.x = emit(lin(xr, r, term(D, 1), 1 - r), q.alpha)
    st.x0 = D
  end,
})

reg("euler_ancestral", {
  stochastic = true, order = 1, nfe = 1,
  options = ancestral_options,
  setup = function(st) check_nonneg(st, "eta", "s_noise") end,
  step = function(st)
    local p, q, xh = begin(st)
    local s, sn = p.sigma_hat, q.sigma_hat
    local D = st:eval(st.x, p.t, "x0")
    local down, up = ancestral(s, sn, st.opts.eta)
    local r = down / s
    local e = lin(xh, r, term(D, 1), 1 - r)
    if sn > 0 then e = lin(e, 1, term(st:draw(), 1), st.opts.s_noise * up) end
    st.x = emit(e, q.alpha)
    st.x0 = D
  end,
})

---------------------------------------------------------------------------------------------
-- Heun and DPM-2 (second order, two evaluations per step; Euler on the step to sigma = 0).

reg("heun", {
  stochastic = false, order = 2, nfe = 2,
  options = churn_options,
  setup = function(st) check_nonneg(st, "churn", "s_noise") end,
  step = function(st)
    local p, q, xh = begin(st)
    local xr, shat, D = churn_and_denoise(st, p, xh)
    local sn = q.sigma_hat
    local d = to_d(xr, D, shat)
    local dt = sn - shat
    if sn == 0 then
      st.x = emit(lin(xr, 1, d, dt), q.alpha)
      st.x0 = D
      return
    end
    local x2 = emit(lin(xr, 1, d, dt), q.alpha)
    local D2 = st:eval(x2, q.t, "x0")
    local d2 = to_d(term(x2, 1 / q.alpha), D2, sn)
    st.x = emit(lin(xr, 1, d, dt / 2, d2, dt / 2), q.alpha)
    st.x0 = D2
  end,
})

reg("dpm_2", {
  stochastic = false, order = 2, nfe = 2,
  options = churn_options,
  setup = function(st) check_nonneg(st, "churn", "s_noise") end,
  step = function(st)
    local p, q, xh = begin(st)
    local xr, shat, D = churn_and_denoise(st, p, xh)
    local sn = q.sigma_hat
    local d = to_d(xr, D, shat)
    if sn == 0 then
      st.x = emit(lin(xr, 1, d, sn - shat), q.alpha)
      st.x0 = D
      return
    end
    local smid = exp(0.5 * (log(shat) + log(sn)))
    local D2, x2, pm = denoise_at(st, lin(xr, 1, d, smid - shat), smid)
    local d2 = to_d(term(x2, 1 / pm.alpha), D2, smid)
    st.x = emit(lin(xr, 1, d2, sn - shat), q.alpha)
    st.x0 = D2
  end,
})

reg("dpm_2_ancestral", {
  stochastic = true, order = 2, nfe = 2,
  options = ancestral_options,
  setup = function(st) check_nonneg(st, "eta", "s_noise") end,
  step = function(st)
    local p, q, xh = begin(st)
    local s = p.sigma_hat
    local D = st:eval(st.x, p.t, "x0")
    local down, up = ancestral(s, q.sigma_hat, st.opts.eta)
    local d = to_d(xh, D, s)
    if down == 0 then
      st.x = emit(lin(xh, 1, d, down - s), q.alpha)
      st.x0 = D
      return
    end
    local smid = exp(0.5 * (log(s) + log(down)))
    local D2, x2, pm = denoise_at(st, lin(xh, 1, d, smid - s), smid)
    local d2 = to_d(term(x2, 1 / pm.alpha), D2, smid)
    local e = lin(xh, 1, d2, down - s, term(st:draw(), 1), st.opts.s_noise * up)
    st.x = emit(e, q.alpha)
    st.x0 = D2
  end,
})

---------------------------------------------------------------------------------------------
-- Linear multistep (LMS): x_hat' = x_hat + sum_j c_j d_{i-j}, where c_j integrates the
-- Lagrange basis polynomial of node sigma_{i-j} (over the last `order` sigmas) from sigma_i
-- to sigma_{i+1}.  k-diffusion integrates numerically (scipy quad); Gauss-Legendre with
-- `order` nodes is exact for these polynomials (degree order - 1), so the coefficients are
-- the exact ones, in double.

local gl_cache = {}

-- Nodes and weights of n-point Gauss-Legendre quadrature on [-1, 1] (Newton on P_n).
local function gauss_legendre(n)
  if gl_cache[n] then return gl_cache[n] end
  local xs, ws = {}, {}
  for i = 1, n do
    local x = math.cos(math.pi * (i - 0.25) / (n + 0.5))
    local dp
    for _ = 1, 100 do
      local p0, p1 = 1, x
      for k = 2, n do p0, p1 = p1, ((2 * k - 1) * x * p1 - (k - 1) * p0) / k end
      -- p1 = P_n(x), p0 = P_{n-1}(x)
      dp = n * (x * p1 - p0) / (x * x - 1)
      local dx = p1 / dp
      x = x - dx
      if math.abs(dx) < 1e-16 then break end
    end
    local p0, p1 = 1, x
    for k = 2, n do p0, p1 = p1, ((2 * k - 1) * x * p1 - (k - 1) * p0) / k end
    dp = n * (x * p1 - p0) / (x * x - 1)
    xs[i], ws[i] = x, 2 / ((1 - x * x) * dp * dp)
  end
  gl_cache[n] = { xs, ws }
  return gl_cache[n]
end
M._gauss_legendre = gauss_legendre

-- The LMS coefficients: nodes[1] = sigma_i (newest), nodes[2] = sigma_{i-1}, ...; returns
-- c[j] = integral from a to b of prod_{k ~= j} (tau - nodes[k]) / (nodes[j] - nodes[k]).
function M.lms_coefficients(nodes, a, b)
  local m = #nodes
  local g = gauss_legendre(math.max(m, 1))
  local mid, half = (a + b) / 2, (b - a) / 2
  local c = {}
  for j = 1, m do
    local sum = 0
    for q = 1, #g[1] do
      local tau = mid + half * g[1][q]
      local prod = 1
      for k = 1, m do
        if k ~= j then prod = prod * (tau - nodes[k]) / (nodes[j] - nodes[k]) end
      end
      sum = sum + g[2][q] * prod
    end
    c[j] = half * sum
  end
  return c
end

reg("lms", {
  stochastic = false, order = 4, nfe = 1,
  options = { order = 4 },
  setup = function(st)
    local o = st.opts.order
    if math.type(o) ~= "integer" or o < 1 then
      error(("sample: option 'order' of solver lms must be a positive integer, got %s"):format(tostring(o)), 0)
    end
    st.mem.hist = {}
  end,
  step = function(st)
    local p, q, xh = begin(st)
    local s = p.sigma_hat
    local D = st:eval(st.x, p.t, "x0")
    -- history: newest first, at most `order` entries {x, alpha, sigma_hat, D}; a new table
    -- each step (stored tables are never modified in place).
    local hist = { { x = st.x, alpha = p.alpha, s = s, D = D } }
    for k = 1, min(#st.mem.hist, st.opts.order - 1) do hist[k + 1] = st.mem.hist[k] end
    st.mem.hist = hist
    local nodes = {}
    for k, h in ipairs(hist) do nodes[k] = h.s end
    local c = M.lms_coefficients(nodes, s, q.sigma_hat)
    local args = { xh, 1 }
    for k, h in ipairs(hist) do
      args[#args + 1] = to_d(term(h.x, 1 / h.alpha), h.D, h.s)
      args[#args + 1] = c[k]
    end
    st.x = emit(lin(table.unpack(args)), q.alpha)
    st.x0 = D
  end,
})

---------------------------------------------------------------------------------------------
-- DPM-Solver++ family (Lu et al. 2022) in k-diffusion's form.  In hat space lambda = -log
-- sigma_hat (k-diffusion's t), so sigma_fn(t') / sigma_fn(t) = sigma_hat' / sigma_hat.

reg("dpmpp_2s_ancestral", {
  stochastic = true, order = 2, nfe = 2,
  options = ancestral_options,
  setup = function(st) check_nonneg(st, "eta", "s_noise") end,
  step = function(st)
    local p, q, xh = begin(st)
    local s, sn = p.sigma_hat, q.sigma_hat
    local D = st:eval(st.x, p.t, "x0")
    local down, up = ancestral(s, sn, st.opts.eta)
    local e
    if down == 0 then
      e = lin(xh, 1, to_d(xh, D, s), down - s)
      st.x0 = D
    else
      local h = log(s) - log(down)
      local smid = exp(-(-log(s) + 0.5 * h))
      local D2 = denoise_at(st, lin(xh, smid / s, term(D, 1), -expm1(-0.5 * h)), smid)
      e = lin(xh, down / s, term(D2, 1), -expm1(-h))
      st.x0 = D2
    end
    if sn > 0 then e = lin(e, 1, term(st:draw(), 1), st.opts.s_noise * up) end
    st.x = emit(e, q.alpha)
  end,
})

reg("dpmpp_sde", {
  stochastic = true, order = 2, nfe = 2,
  options = with(ancestral_options, { r = 0.5, brownian = true }),
  setup = function(st)
    check_nonneg(st, "eta", "s_noise")
    local r = st.opts.r
    if not (r > 0 and r < 1) then
      error(("sample: option 'r' of solver dpmpp_sde must be in (0, 1), got %s"):format(tostring(r)), 0)
    end
  end,
  step = function(st)
    local p, q, xh = begin(st)
    local s, sn = p.sigma_hat, q.sigma_hat
    local o = st.opts
    local D = st:eval(st.x, p.t, "x0")
    if sn == 0 then
      st.x = emit(lin(xh, 1, to_d(xh, D, s), -s), q.alpha)
      st.x0 = D
      return
    end
    local lam, lamn = -log(s), -log(sn)
    local h = lamn - lam
    local ss = exp(-(lam + h * o.r))
    local fac = 1 / (2 * o.r)
    -- stage 1: ancestral step from s to ss
    local d1, u1 = ancestral(s, ss, o.eta)
    local z1 = st:draw()
    local e2 = lin(xh, d1 / s, term(D, 1), 1 - d1 / s, term(z1, 1), o.s_noise * u1)
    local D2 = denoise_at(st, e2, ss)
    -- stage 2: ancestral step from s to sn with the combined estimate
    local dn, un = ancestral(s, sn, o.eta)
    local z2 = term(st:draw(), 1)
    if o.brownian then
      -- k-diffusion's default noise is a Brownian tree in sigma: stage 1 uses the increment
      -- over [ss, s], stage 2 the one over [sn, s], which contains it.  Build the second
      -- from the first and an independent draw so the pair has that joint law.
      local w1 = sqrt((s - ss) / (s - sn))
      z2 = lin(term(z1, 1), w1, z2, sqrt((ss - sn) / (s - sn)))
    end
    local e = lin(xh, dn / s, term(D, 1), (1 - dn / s) * (1 - fac), term(D2, 1), (1 - dn / s) * fac,
      z2, o.s_noise * un)
    st.x = emit(e, q.alpha)
    st.x0 = D2
  end,
})

reg("dpmpp_2m", {
  stochastic = false, order = 2, nfe = 1,
  step = function(st)
    local p, q, xh = begin(st)
    local s, sn = p.sigma_hat, q.sigma_hat
    local D = st:eval(st.x, p.t, "x0")
    local h = log(s) - (sn > 0 and log(sn) or -math.huge)
    local a = -expm1(-h)
    local e
    if st.mem.old == nil or sn == 0 then
      e = lin(xh, sn / s, term(D, 1), a)
    else
      local hlast = log(st.mem.s_prev) - log(s)
      local r = hlast / h
      e = lin(xh, sn / s, term(D, 1), a * (1 + 1 / (2 * r)), term(st.mem.old, 1), -a / (2 * r))
    end
    st.mem = { old = D, s_prev = s }
    st.x = emit(e, q.alpha)
    st.x0 = D
  end,
})

reg("dpmpp_2m_sde", {
  stochastic = true, order = 2, nfe = 1,
  options = { eta = 1.0, s_noise = 1.0, solver_type = "midpoint" },
  setup = function(st)
    check_nonneg(st, "eta", "s_noise")
    local t = st.opts.solver_type
    if t ~= "midpoint" and t ~= "heun" then
      error(("sample: option 'solver_type' of solver dpmpp_2m_sde must be 'midpoint' or 'heun', got '%s'"):format(
        tostring(t)), 0)
    end
  end,
  step = function(st)
    local p, q, xh = begin(st)
    local s, sn = p.sigma_hat, q.sigma_hat
    local o = st.opts
    local D = st:eval(st.x, p.t, "x0")
    if sn == 0 then
      st.x = emit(term(D, 1), q.alpha)
      st.x0 = D
      st.mem = { old = D, h = st.mem.h }
      return
    end
    local h = log(s) - log(sn)
    local eh = o.eta * h
    local a = -expm1(-h - eh)
    local e = lin(xh, sn / s * exp(-eh), term(D, 1), a)
    local old = st.mem.old
    if old ~= nil then
      local r = st.mem.h / h
      local c
      if o.solver_type == "heun" then c = (a / (-h - eh) + 1) / r else c = 0.5 * a / r end
      e = lin(e, 1, term(D, 1), c, term(old, 1), -c)
    end
    if o.eta ~= 0 then
      e = lin(e, 1, term(st:draw(), 1), sn * sqrt(-expm1(-2 * eh)) * o.s_noise)
    end
    st.mem = { old = D, h = h }
    st.x = emit(e, q.alpha)
    st.x0 = D
  end,
})

reg("dpmpp_3m_sde", {
  stochastic = true, order = 3, nfe = 1,
  options = { eta = 1.0, s_noise = 1.0 },
  setup = function(st) check_nonneg(st, "eta", "s_noise") end,
  step = function(st)
    local p, q, xh = begin(st)
    local s, sn = p.sigma_hat, q.sigma_hat
    local o = st.opts
    local m = st.mem
    local D = st:eval(st.x, p.t, "x0")
    if sn == 0 then
      st.x = emit(term(D, 1), q.alpha)
      st.x0 = D
      st.mem = { D1 = D, D2 = m.D1, h1 = m.h1, h2 = m.h1 }
      return
    end
    local h = log(s) - log(sn)
    local he = h * (o.eta + 1)
    local e = lin(xh, exp(-he), term(D, 1), -expm1(-he))
    local phi2 = expm1(-he) / he + 1
    if m.h2 ~= nil then
      local r0, r1 = m.h1 / h, m.h2 / h
      -- d1_0 = (D - D1) / r0, d1_1 = (D1 - D2) / r1
      local d10 = lin(term(D, 1), 1 / r0, term(m.D1, 1), -1 / r0)
      local d11 = lin(term(m.D1, 1), 1 / r1, term(m.D2, 1), -1 / r1)
      local phi3 = phi2 / he - 0.5
      local k = r0 / (r0 + r1)
      local d1 = lin(d10, 1 + k, d11, -k)
      local d2 = lin(d10, 1 / (r0 + r1), d11, -1 / (r0 + r1))
      e = lin(e, 1, d1, phi2, d2, -phi3)
    elseif m.h1 ~= nil then
      local r = m.h1 / h
      e = lin(e, 1, term(D, 1), phi2 / r, term(m.D1, 1), -phi2 / r)
    end
    if o.eta ~= 0 then
      e = lin(e, 1, term(st:draw(), 1), sn * sqrt(-expm1(-2 * h * o.eta)) * o.s_noise)
    end
    st.mem = { D1 = D, D2 = m.D1, h1 = h, h2 = m.h1 }
    st.x = emit(e, q.alpha)
    st.x0 = D
  end,
})

return M
