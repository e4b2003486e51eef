-- Time grids: the decreasing list of times a sampling run visits, steps + 1 entries, from
-- t_start (noise) to t_end (data).  Spacings are uniform in some variable:
--   time_uniform     t
--   time_quadratic   sqrt(t) (the official DPM-Solver's "time_quadratic")
--   logSNR           lambda = log(alpha / sigma)
--   karras           sigma_hat^(1/rho) (Karras et al.), then a final 0 like k-diffusion
--   exponential      log sigma_hat, then a final 0
-- or a user list of times.  Sigma-space spacings run between sigma_hat(t_start) and
-- sigma_hat(t_end) and append t = 0 (sigma = 0) as the last entry.
local M = {}

local function linspace(a, b, n)
  local out = {}
  for i = 0, n - 1 do out[i + 1] = (n == 1) and a or a + (b - a) * i / (n - 1) end
  if n > 1 then out[n] = b end
  return out
end
M.linspace = linspace

-- Sigma-space spacings: n sigma_hat values from smax to smin, plus a final 0.
local sigma_spacings = {
  karras = function(smin, smax, n, o)
    local rho = o.rho or 7.0
    local a, b = smax ^ (1 / rho), smin ^ (1 / rho)
    local out = {}
    for i = 0, n - 1 do out[i + 1] = (a + i / (n - 1) * (b - a)) ^ rho end
    return out
  end,
  exponential = function(smin, smax, n)
    local out = {}
    for i, v in ipairs(linspace(math.log(smax), math.log(smin), n)) do out[i] = math.exp(v) end
    return out
  end,
}
M.sigma_spacings = sigma_spacings

local time_spacings = {
  time_uniform = function(_, t0, t1, n) return linspace(t0, t1, n + 1) end,
  time_quadratic = function(_, t0, t1, n)
    local out = {}
    for i, v in ipairs(linspace(math.sqrt(t0), math.sqrt(t1), n + 1)) do out[i] = v * v end
    return out
  end,
  logSNR = function(s, t0, t1, n)
    local out = {}
    for i, l in ipairs(linspace(s:lambda(t0), s:lambda(t1), n + 1)) do out[i] = s:t_of_lambda(l) end
    out[1], out[n + 1] = t0, t1
    return out
  end,
}
M.time_spacings = time_spacings

local function names()
  local out = {}
  for k in pairs(time_spacings) do out[#out + 1] = k end
  for k in pairs(sigma_spacings) do out[#out + 1] = k end
  table.sort(out)
  return table.concat(out, ", ")
end
M.names = names

-- grid.times(schedule, {spacing = "logSNR", steps = n, t_start = ..., t_end = ..., rho = 7})
-- or grid.times(schedule, {times = {...}}) for a user list (checked to be decreasing).
function M.times(schedule, o)
  if type(o) ~= "table" then error("bad argument #2 to 'times' (options table expected)", 2) end
  if o.times then
    local ts = o.times
    if type(ts) ~= "table" or #ts < 2 then error("grid: 'times' must be a list of at least 2 times", 2) end
    local out = {}
    for i, t in ipairs(ts) do
      if type(t) ~= "number" or t ~= t then error(("grid: times[%d] is not a number"):format(i), 2) end
      if i > 1 and not (t < out[i - 1]) then
        error(("grid: times must decrease strictly: times[%d] = %.17g after %.17g"):format(i, t, out[i - 1]), 2)
      end
      out[i] = t
    end
    return out
  end
  local spacing = o.spacing or "logSNR"
  local n = o.steps
  if math.type(n) ~= "integer" or n < 1 then
    error(("grid: 'steps' must be a positive integer, got %s"):format(tostring(n)), 2)
  end
  local t0, t1 = o.t_start or schedule.t_start, o.t_end or schedule.t_end
  if not (t0 > t1 and t1 >= 0) then
    error(("grid: need t_start > t_end >= 0, got %.17g and %.17g"):format(t0, t1), 2)
  end
  if time_spacings[spacing] then return time_spacings[spacing](schedule, t0, t1, n) end
  local sf = sigma_spacings[spacing]
  if not sf then error(("grid: unknown spacing '%s'; valid: %s"):format(tostring(spacing), names()), 2) end
  local smax, smin = o.sigma_max or schedule:sigma_hat(t0), o.sigma_min or schedule:sigma_hat(t1)
  if n < 2 then error(("grid: spacing '%s' needs at least 2 steps"):format(spacing), 2) end
  local sig = sf(smin, smax, n, o)
  local out = {}
  for i, sh in ipairs(sig) do out[i] = schedule:t_of_sigma_hat(sh) end
  out[1] = (o.sigma_max == nil) and t0 or out[1]
  out[n + 1] = 0
  return out
end

return M
