-- Noise schedules: x_t = alpha(t) x0 + sigma(t) eps, in double precision.
--
-- Every schedule is an object with
--   s:alpha(t), s:sigma(t), s:lambda(t)        lambda = log(alpha / sigma)
--   s:t_of_lambda(lam)                         the inverse of lambda
--   s:sigma_hat(t), s:t_of_sigma_hat(sh)       the sigma-space view: sigma_hat = sigma / alpha
--   s:point(t)                                 {t, alpha, sigma, lambda, sigma_hat[, timestep]}
--   s.t_start, s.t_end                         the default time range of a sampling run
--   s.kind                                     the family's name
-- Time runs from t_start (noise) down to t_end (data); t = 0 is the data itself when the
-- family reaches it (sigma = 0, lambda = +inf).
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

return M
