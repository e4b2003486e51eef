-- Noise schedules: x_t = alpha(t) x0 + sigma(t) eps, in double precision.
--
-- Every schedule is an object with
--   s:alpha(t), s:sigma(t), s:lambda(t)        lambda = log(alpha / sigma)
--   s:t_of_lambda(lam)                         the inverse of lambda
--   s:sigma_hat(t), s:t_of_sigma_hat(sh)       the sigma-space view: sigma_hat = sigma / alpha
--   s:point(t)                                 {t, alpha, sigma, lambda, sigma_hat[, timestep]
--                                               [, dalpha, dsigma]}
--   s.t_start, s.t_end                         the default time range of a sampling run
--   s.kind                                     the family's name
-- Time runs from t_start (noise) down to t_end (data); t = 0 is the data itself when the
-- family reaches it (sigma = 0, lambda = +inf).
-- Families: vp_linear, vp_cosine, vp_discrete (diffusers' betas, zero-terminal-SNR rescale,
-- the official DPM-Solver's continuous time), ve, edm, rectified_flow. docs/schedules.md.
local M = {}

local Schedule = {}
Schedule.__index = Schedule

local inf, exp, log, sqrt = math.huge, math.exp, math.log, math.sqrt

-- log(1 - e^x) for x < 0, accurate near 0 and for large |x|.
local function log1mexp(x)
  if x > -0.6931471805599453 then return log(-M.expm1(x)) end
  return M.log1p(-exp(x))
end

function M.expm1(x)
  if math.abs(x) < 1e-5 then return x + x * x / 2 + x * x * x / 6 end
  return exp(x) - 1
end

function M.log1p(x)
  if math.abs(x) < 1e-4 then return x - x * x / 2 + x * x * x / 3 end
  return log(1 + x)
end

-- log(e^a + e^b)
local function logaddexp(a, b)
  local m = math.max(a, b)
  if m == -inf then return -inf end
  return m + M.log1p(exp(-math.abs(a - b)))
end
M.logaddexp = logaddexp

function Schedule:alpha(t) return exp(self:log_alpha(t)) end

function Schedule:sigma(t)
  if t <= 0 then return 0 end
  return sqrt(-M.expm1(2 * self:log_alpha(t)))
end

function Schedule:lambda(t)
  if t <= 0 then return inf end
  local la = self:log_alpha(t)
  return la - 0.5 * log1mexp(2 * la)
end

function Schedule:sigma_hat(t)
  if t <= 0 then return 0 end
  return self:sigma(t) / self:alpha(t)
end

-- sigma_hat = e^(-lambda) for every family.
function Schedule:t_of_sigma_hat(sh)
  if sh <= 0 then return 0 end
  return self:t_of_lambda(-log(sh))
end

function Schedule:point(t)
  local p = { t = t, alpha = self:alpha(t), sigma = self:sigma(t), lambda = self:lambda(t) }
  p.sigma_hat = (p.alpha > 0) and p.sigma / p.alpha or inf
  if self.timestep then p.timestep = self:timestep(t) end
  if self.derivatives then p.dalpha, p.dsigma = self:derivatives(t) end
  return p
end

function Schedule:__tostring()
  local parts = {}
  for _, k in ipairs(self._params or {}) do parts[#parts + 1] = ("%s=%s"):format(k, tostring(self[k])) end
  return ("diffuse.schedule.%s{%s}"):format(self.kind, table.concat(parts, ", "))
end

-- Checks an options table against the allowed keys, with defaults.
local function options(fname, opts, defaults)
  opts = opts or {}
  if type(opts) ~= "table" then
    error(("bad argument #1 to '%s' (options table expected, got %s)"):format(fname, type(opts)), 3)
  end
  local out = {}
  for k, v in pairs(opts) do
    if defaults[k] == nil then
      local names = {}
      for n in pairs(defaults) do names[#names + 1] = n end
      table.sort(names)
      error(("bad argument #1 to '%s' (unknown option '%s'; valid: %s)"):format(fname, tostring(k),
        table.concat(names, ", ")), 3)
    end
    if type(v) ~= type(defaults[k]) then
      error(("bad argument #1 to '%s' (option '%s' must be a %s, got %s)"):format(fname, k,
        type(defaults[k]), type(v)), 3)
    end
    out[k] = v
  end
  for k, v in pairs(defaults) do
    if out[k] == nil then out[k] = v end
  end
  return out
end
M._options = options

local function new(kind, fields, params)
  fields.kind = kind
  fields._params = params
  return setmetatable(fields, Schedule)
end
M._new = new
M.Schedule = Schedule

-- Linear VP SDE (the continuous-time DDPM): log alpha(t) = -(b1 - b0) t^2 / 4 - b0 t / 2.
function M.vp_linear(opts)
  local o = options("vp_linear", opts, { beta_0 = 0.1, beta_1 = 20.0, t_start = 1.0, t_end = 1e-3 })
  if not (o.beta_0 > 0 and o.beta_1 > o.beta_0) then
    error("bad argument #1 to 'vp_linear' (need 0 < beta_0 < beta_1)", 2)
  end
  local s = new("vp_linear", o, { "beta_0", "beta_1" })
  local b0, b1 = o.beta_0, o.beta_1
  function s:log_alpha(t) return -0.25 * t * t * (b1 - b0) - 0.5 * t * b0 end
  function s:t_of_lambda(lam)
    if lam == inf then return 0 end
    local tmp = 2 * (b1 - b0) * logaddexp(-2 * lam, 0)
    local delta = b0 * b0 + tmp
    return tmp / (sqrt(delta) + b0) / (b1 - b0)
  end
  return s
end

-- Variance exploding / EDM (Karras et al.): alpha = 1, sigma = t, so t is the noise level.
function M.edm(opts)
  local o = options("edm", opts, { sigma_min = 0.002, sigma_max = 80.0 })
  if not (o.sigma_min > 0 and o.sigma_max > o.sigma_min) then
    error("bad argument #1 to 'edm' (need 0 < sigma_min < sigma_max)", 2)
  end
  local s = new("edm", o, { "sigma_min", "sigma_max" })
  s.t_start, s.t_end = o.sigma_max, o.sigma_min
  function s:log_alpha() return 0 end
  function s:alpha() return 1 end
  function s:sigma(t) return math.max(t, 0) end
  function s:lambda(t) return t <= 0 and inf or -log(t) end
  function s:t_of_lambda(lam) return lam == inf and 0 or exp(-lam) end
  function s:sigma_hat(t) return math.max(t, 0) end
  function s:t_of_sigma_hat(sh) return math.max(sh, 0) end
  return s
end

-- Options helper for the families below: `t_start` / `t_end` default to the family's own
-- values (NaN marks "not given").
local nan = 0 / 0
local function given(v) return v == v end

local function check_range(fname, s)
  if not (s.t_start > s.t_end and s.t_end >= 0) then
    error(("bad argument #1 to '%s' (need t_start > t_end >= 0, got %.17g and %.17g)"):format(fname,
      s.t_start, s.t_end), 3)
  end
end

-- Rounds x to the nearest integer-valued float when it is within 1e-9 (relative) of one.
local function snap(x)
  local r = math.floor(x + 0.5)
  if math.abs(x - r) <= 1e-9 * math.max(1, math.abs(x)) then return r end
  return x
end

-- The beta lists of diffusers' DDPM-family schedulers, in double.
local function make_betas(name, n, b0, b1)
  local out = {}
  if name == "linear" then
    for i = 0, n - 1 do out[i + 1] = (n == 1) and b0 or b0 + (b1 - b0) * i / (n - 1) end
  elseif name == "scaled_linear" then
    local a, b = sqrt(b0), sqrt(b1)
    for i = 0, n - 1 do
      local r = (n == 1) and a or a + (b - a) * i / (n - 1)
      out[i + 1] = r * r
    end
  elseif name == "squaredcos_cap_v2" then
    local function abar(t) return math.cos((t + 0.008) / 1.008 * math.pi / 2) ^ 2 end
    for i = 0, n - 1 do out[i + 1] = math.min(1 - abar((i + 1) / n) / abar(i / n), 0.999) end
  else
    error(("bad argument #1 to 'vp_discrete' (unknown betas '%s'; valid: linear, scaled_linear, " ..
      "squaredcos_cap_v2, or a list of numbers)"):format(tostring(name)), 3)
  end
  return out
end

-- Discrete-time VP (DDPM / Stable Diffusion style): betas for the training steps n = 0 .. N-1,
-- alpha_bar_n = prod_{i <= n} (1 - beta_i), and the continuous time of the official DPM-Solver:
-- step n sits at t = (n + 1) / N and log alpha is piecewise linear in t between steps.
function M.vp_discrete(opts)
  local betas_opt
  if type(opts) == "table" and type(opts.betas) == "table" then
    betas_opt = opts.betas
    local copy = {}
    for k, v in pairs(opts) do copy[k] = v end
    copy.betas = nil
    opts = copy
  end
  local o = options("vp_discrete", opts, { betas = "linear", beta_start = 0.0001, beta_end = 0.02,
    n = 1000, zero_snr = false, t_start = nan, t_end = nan })
  local betas
  if betas_opt then
    if opts.n ~= nil and opts.n ~= #betas_opt then
      error(("bad argument #1 to 'vp_discrete' (n = %s but the betas list has %d entries)"):format(
        tostring(opts.n), #betas_opt), 2)
    end
    if opts.beta_start ~= nil or opts.beta_end ~= nil then
      error("bad argument #1 to 'vp_discrete' (beta_start / beta_end do not apply to a list of betas)", 2)
    end
    betas = {}
    for i, b in ipairs(betas_opt) do
      if type(b) ~= "number" or not (b > 0 and b <= 1) then
        error(("bad argument #1 to 'vp_discrete' (betas[%d] must be a number in (0, 1], got %s)"):format(
          i, tostring(b)), 2)
      end
      if b == 1 and i < #betas_opt then
        error(("bad argument #1 to 'vp_discrete' (betas[%d] = 1 before the last step)"):format(i), 2)
      end
      betas[i] = b
    end
    o.n = #betas
    o.betas = "list"
  else
    if math.type(o.n) ~= "integer" or o.n < 2 then
      error(("bad argument #1 to 'vp_discrete' (n must be an integer >= 2, got %s)"):format(tostring(o.n)), 2)
    end
    if o.betas ~= "squaredcos_cap_v2" and not (o.beta_start > 0 and o.beta_end >= o.beta_start and o.beta_end < 1) then
      error("bad argument #1 to 'vp_discrete' (need 0 < beta_start <= beta_end < 1)", 2)
    end
    betas = make_betas(o.betas, o.n, o.beta_start, o.beta_end)
  end
  local N = o.n
  if N < 2 then error("bad argument #1 to 'vp_discrete' (need at least 2 betas)", 2) end

  -- L[k] = log alpha at t = k / N (k = 1 .. N is step n = k - 1); L[0] = 0 (the data, t = 0).
  local L, abar = { [0] = 0 }, {}
  if o.zero_snr then
    -- Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1:
    -- shift sqrt(alpha_bar) so the last is 0, scale so the first is unchanged.
    local ra, acc = {}, 0
    for i = 1, N do acc = acc + M.log1p(-betas[i]); ra[i] = exp(0.5 * acc) end
    local r1, rN = ra[1], ra[N]
    if not (r1 > rN) then error("bad argument #1 to 'vp_discrete' (zero_snr needs alpha_bar to decrease)", 2) end
    for i = 1, N do
      local r = (ra[i] - rN) * r1 / (r1 - rN)
      L[i] = (i == N) and -inf or log(r)
      abar[i] = (i == N) and 0 or r * r
    end
    betas = { 1 - abar[1] }
    for i = 2, N do betas[i] = 1 - abar[i] / abar[i - 1] end
  else
    local acc = 0
    for i = 1, N do
      acc = acc + ((betas[i] == 1) and -inf or M.log1p(-betas[i]))
      L[i] = 0.5 * acc
      abar[i] = exp(acc)
    end
  end
  local zero_terminal = (L[N] == -inf)

  local s = new("vp_discrete", o, { "betas", "beta_start", "beta_end", "n", "zero_snr" })
  if o.betas == "list" then s._params = { "betas", "n", "zero_snr" } end
  s.beta_values, s.alphas_cumprod, s.log_alphas = betas, abar, L
  s.zero_terminal = zero_terminal
  s.t_start = given(o.t_start) and o.t_start or (zero_terminal and (N - 1) / N or 1.0)
  s.t_end = given(o.t_end) and o.t_end or 1 / N
  check_range("vp_discrete", s)

  function s:log_alpha(t)
    local x = t * N
    local k = math.floor(x)
    if k < 0 then k = 0 elseif k > N - 1 then k = N - 1 end
    if k == N - 1 and zero_terminal then
      -- The last segment ends at alpha = 0: alpha is linear in t there.
      if x >= N then return -inf end
      return L[N - 1] + log(N - x)
    end
    return L[k] + (x - k) * (L[k + 1] - L[k])
  end

  function s:t_of_lambda(lam)
    if lam == inf then return 0 end
    local la = -0.5 * logaddexp(0, -2 * lam)
    if la >= 0 then return 0 end
    if zero_terminal and la <= L[N - 1] then
      if la == -inf then return 1 end
      return (N - exp(la - L[N - 1])) / N
    end
    -- L decreases: find k with L[k] >= la > L[k + 1] (the last segment extrapolates).
    local lo, hi = 0, N - 1
    if la <= L[N - 1] then
      lo = N - 1
    else
      while hi - lo > 1 do
        local mid = (lo + hi) // 2
        if L[mid] >= la then lo = mid else hi = mid end
      end
    end
    return (lo + (la - L[lo]) / (L[lo + 1] - L[lo])) / N
  end

  -- The model's input: DPM-Solver's convention (t - 1/N) * 1000, i.e. the step index n at
  -- t = (n + 1) / N when N = 1000; integers are returned exactly.
  function s:timestep(t) return snap((t * N - 1) * 1000 / N) end
  return s
end

-- Continuous cosine VP (Nichol & Dhariwal), as in the official DPM-Solver:
-- log alpha(t) = log cos((t + s) / (1 + s) * pi/2) - log cos(s / (1 + s) * pi/2).
function M.vp_cosine(opts)
  local o = options("vp_cosine", opts, { s = 0.008, t_start = 0.9946, t_end = 1e-3 })
  if not (o.s > 0) then error("bad argument #1 to 'vp_cosine' (need s > 0)", 2) end
  if not (o.t_start < 1) then error("bad argument #1 to 'vp_cosine' (need t_start < 1: alpha(1) = 0)", 2) end
  local s = new("vp_cosine", o, { "s" })
  check_range("vp_cosine", s)
  local cs = o.s
  local half_pi = math.pi / 2
  local la0 = log(math.cos(cs / (1 + cs) * half_pi))
  function s:log_alpha(t)
    if t >= 1 then return -inf end
    return log(math.cos((t + cs) / (1 + cs) * half_pi)) - la0
  end
  function s:t_of_lambda(lam)
    if lam == inf then return 0 end
    local la = -0.5 * logaddexp(-2 * lam, 0)
    return math.acos(exp(la + la0)) * (1 + cs) / half_pi - cs
  end
  return s
end

-- Variance exploding (score SDE): alpha = 1, sigma(t) = sigma_min (sigma_max / sigma_min)^t for
-- t in (0, 1]; t = 0 is the data (sigma = 0), so sigma jumps from sigma_min to 0 there.
function M.ve(opts)
  local o = options("ve", opts, { sigma_min = 0.01, sigma_max = 50.0, t_start = 1.0, t_end = 1e-5 })
  if not (o.sigma_min > 0 and o.sigma_max > o.sigma_min) then
    error("bad argument #1 to 've' (need 0 < sigma_min < sigma_max)", 2)
  end
  local s = new("ve", o, { "sigma_min", "sigma_max" })
  check_range("ve", s)
  local lmin, lratio = log(o.sigma_min), log(o.sigma_max / o.sigma_min)
  function s:log_alpha() return 0 end
  function s:alpha() return 1 end
  function s:sigma(t) return t <= 0 and 0 or exp(lmin + t * lratio) end
  function s:sigma_hat(t) return self:sigma(t) end
  function s:lambda(t) return t <= 0 and inf or -(lmin + t * lratio) end
  function s:t_of_lambda(lam)
    if lam == inf then return 0 end
    local t = (-lam - lmin) / lratio
    if not (t > 0) then
      error(("ve: noise level %.17g is not above sigma_min = %.17g (t = 0 is the data, sigma = 0)"):format(
        exp(-lam), o.sigma_min), 2)
    end
    return t
  end
  return s
end

-- Rectified flow / flow matching: x_t = (1 - t) x0 + t eps, so alpha = 1 - t, sigma = t,
-- lambda = log((1 - t) / t), sigma_hat = t / (1 - t). t = 1 is pure noise (lambda = -inf), so
-- the default run starts just below it (t_start = 0.999); t_start = 1 works with the spacings in
-- time (time_uniform, time_quadratic, a list).
function M.rectified_flow(opts)
  local o = options("rectified_flow", opts, { t_start = 0.999, t_end = 1e-3 })
  if not (o.t_start <= 1) then error("bad argument #1 to 'rectified_flow' (need t_start <= 1)", 2) end
  local s = new("rectified_flow", o, {})
  check_range("rectified_flow", s)
  function s:log_alpha(t)
    if t <= 0 then return 0 end
    return t >= 1 and -inf or M.log1p(-t)
  end
  function s:alpha(t) return t <= 0 and 1 or math.max(1 - t, 0) end
  function s:sigma(t) return t <= 0 and 0 or math.min(t, 1) end
  function s:lambda(t)
    if t <= 0 then return inf end
    if t >= 1 then return -inf end
    return M.log1p(-t) - log(t)
  end
  function s:t_of_lambda(lam)
    if lam == inf then return 0 end
    if lam == -inf then return 1 end
    if lam > 0 then local e = exp(-lam); return e / (1 + e) end
    return 1 / (1 + exp(lam))
  end
  function s:sigma_hat(t)
    if t <= 0 then return 0 end
    if t >= 1 then return inf end
    return t / (1 - t)
  end
  function s:t_of_sigma_hat(sh)
    if sh <= 0 then return 0 end
    if sh == inf then return 1 end
    return sh / (1 + sh)
  end
  function s:derivatives() return -1, 1 end
  return s
end

return M
