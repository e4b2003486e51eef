-- Time grids: the decreasing list of times a sampling run visits, steps + 1 entries, from
-- t_start (noise) to t_end (data).  Spacings are uniform in some variable:
--   time_uniform     t
--   time_quadratic   sqrt(t) (the official DPM-Solver's "time_quadratic")
--   logSNR           lambda = log(alpha / sigma)
--   karras           sigma_hat^(1/rho) (Karras et al.), then a final 0 like k-diffusion
--   exponential      log sigma_hat, then a final 0
--   polyexponential  log sigma_hat along a ramp^rho (k-diffusion), then a final 0
--   linspace, leading, trailing
--                    diffusers' integer timestep spacings of an N-step discrete model, at
--                    t = (n + 1) / N, then a final t_end (default 0, the data)
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
  -- k-diffusion's get_sigmas_polyexponential: log sigma = log smin + ramp^rho (log smax - log smin),
  -- ramp from 1 to 0; rho = 1 is the exponential spacing.
  polyexponential = function(smin, smax, n, o)
    local rho = o.rho or 1.0
    local lmin, lmax = math.log(smin), math.log(smax)
    local out = {}
    for i = 0, n - 1 do
      local ramp = 1 - i / (n - 1)
      out[i + 1] = math.exp(ramp ^ rho * (lmax - lmin) + lmin)
    end
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

-- diffusers' timestep spacings (DDIMScheduler.set_timesteps and the other schedulers'
-- "linspace" / "leading" / "trailing"), reproduced with numpy's arithmetic: numpy rounds half
-- to even, and np.arange(start, stop, step) makes start + i * ((start + step) - start).
local function round_half_even(x)
  local r = math.floor(x)
  local d = x - r
  if d > 0.5 or (d == 0.5 and r % 2 == 1) then r = r + 1 end
  return math.tointeger(r) or r
end
M.round_half_even = round_half_even

local discrete = {
  linspace = function(N, steps)
    local out = {}
    local step = (steps > 1) and (N - 1) / (steps - 1) or 0
    for i = 0, steps - 1 do
      local v = (i == steps - 1 and steps > 1) and (N - 1) or i * step
      out[steps - i] = round_half_even(v)
    end
    return out
  end,
  leading = function(N, steps, offset)
    local ratio = N // steps
    local out = {}
    for i = 0, steps - 1 do out[steps - i] = i * ratio + offset end
    return out
  end,
  trailing = function(N, steps)
    -- diffusers computes np.round(np.arange(N, 0, -N / steps)) - 1; for some step counts
    -- (61, 103, 121, ... of 1000) that arange has steps + 1 entries and diffusers returns a last
    -- timestep of -1. We keep the first `steps` entries, the ones diffusers means.
    local delta = (N + (-(N / steps))) - N
    local out = {}
    for i = 0, steps - 1 do out[i + 1] = round_half_even(N + i * delta) - 1 end
    return out
  end,
}
M.discrete_spacings = discrete

-- grid.discrete_timesteps(spacing, steps, {n = 1000, steps_offset = 0}) -> the decreasing list of
-- `steps` integer timesteps diffusers would use (steps_offset applies to "leading" only, as in
-- diffusers).
function M.discrete_timesteps(spacing, steps, o)
  o = o or {}
  local f = discrete[spacing]
  if not f then
    error(("bad argument #1 to 'discrete_timesteps' (unknown spacing '%s'; valid: leading, linspace, trailing)"):format(
      tostring(spacing)), 2)
  end
  local N, offset = o.n or 1000, o.steps_offset or 0
  if math.type(N) ~= "integer" or N < 1 then
    error(("bad argument #3 to 'discrete_timesteps' (n must be a positive integer, got %s)"):format(tostring(N)), 2)
  end
  if math.type(offset) ~= "integer" then
    error(("bad argument #3 to 'discrete_timesteps' (steps_offset must be an integer, got %s)"):format(
      tostring(offset)), 2)
  end
  if math.type(steps) ~= "integer" or steps < 1 or steps > N then
    error(("bad argument #2 to 'discrete_timesteps' (steps must be an integer in [1, %d], got %s)"):format(N,
      tostring(steps)), 2)
  end
  local ts = f(N, steps, offset)
  for i, v in ipairs(ts) do
    if v < 0 or v > N - 1 or (i > 1 and not (v < ts[i - 1])) then
      error(("discrete_timesteps: spacing '%s' with %d steps, n = %d and steps_offset = %d gives timestep %s at " ..
        "position %d (need strictly decreasing values in [0, %d])"):format(spacing, steps, N, offset, tostring(v), i,
        N - 1), 2)
    end
  end
  return ts
end

local function names()
  local out = {}
  for k in pairs(time_spacings) do out[#out + 1] = k end
  for k in pairs(sigma_spacings) do out[#out + 1] = k end
  for k in pairs(discrete) do out[#out + 1] = k end
  table.sort(out)
  return table.concat(out, ", ")
end
M.names = names

-- grid.times(schedule, {spacing = "logSNR", steps = n, t_start = ..., t_end = ..., rho = 7})
-- or grid.times(schedule, {times = {...}}) for a user list (checked to be decreasing).
local valid_options = { spacing = true, steps = true, t_start = true, t_end = true, rho = true,
  sigma_min = true, sigma_max = true, times = true, n = true, steps_offset = true }

local function finite(v) return v == v and v > -math.huge and v < math.huge end

function M.times(schedule, o)
  if type(o) ~= "table" then error("bad argument #2 to 'times' (options table expected)", 2) end
  for k in pairs(o) do
    if not valid_options[k] then
      local list = {}
      for n in pairs(valid_options) do list[#list + 1] = n end
      table.sort(list)
      error(("grid: unknown option '%s'; valid: %s"):format(tostring(k), table.concat(list, ", ")), 2)
    end
  end
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
  if discrete[spacing] then return M.discrete_times(schedule, spacing, n, o) end
  local t0, t1 = o.t_start or schedule.t_start, o.t_end or schedule.t_end
  if not (t0 > t1 and t1 >= 0) then
    error(("grid: need t_start > t_end >= 0, got %.17g and %.17g"):format(t0, t1), 2)
  end
  if spacing == "logSNR" then
    local l0, l1 = schedule:lambda(t0), schedule:lambda(t1)
    if not (finite(l0) and finite(l1)) then
      error(("grid: spacing 'logSNR' needs a finite lambda at both ends, got lambda(%.17g) = %s and " ..
        "lambda(%.17g) = %s; choose t_start and t_end inside the schedule's range, or a spacing in time " ..
        "(time_uniform, time_quadratic, linspace, leading, trailing)"):format(t0, tostring(l0), t1, tostring(l1)), 2)
    end
  end
  if time_spacings[spacing] then return time_spacings[spacing](schedule, t0, t1, n) end
  local sf = sigma_spacings[spacing]
  if not sf then error(("grid: unknown spacing '%s'; valid: %s"):format(tostring(spacing), names()), 2) end
  local smax, smin = o.sigma_max or schedule:sigma_hat(t0), o.sigma_min or schedule:sigma_hat(t1)
  if not (smin > 0 and smax > smin and smax < math.huge) then
    error(("grid: spacing '%s' needs 0 < sigma_min < sigma_max < inf, got sigma_min = %.17g and " ..
      "sigma_max = %.17g; give t_start / t_end inside the schedule's range or sigma_min / sigma_max"):format(
      spacing, smin, smax), 2)
  end
  if n < 2 then error(("grid: spacing '%s' needs at least 2 steps"):format(spacing), 2) end
  local sig = sf(smin, smax, n, o)
  local out = {}
  for i, sh in ipairs(sig) do out[i] = schedule:t_of_sigma_hat(sh) end
  out[1] = (o.sigma_max == nil) and t0 or out[1]
  out[n + 1] = 0
  return out
end

-- diffusers spacings as times: the `steps` integer timesteps at t = (n + 1) / N, then t_end (0
-- unless given). N is the schedule's number of training steps (vp_discrete) or the option `n`
-- (default 1000, the official DPM-Solver's for continuous VP schedules). An explicit t_start
-- limits the steps to those with t <= t_start (the spacing then treats them as all there is).
function M.discrete_times(schedule, spacing, steps, o)
  if schedule.kind == "edm" then
    error(("grid: spacing '%s' needs a schedule whose time runs over (0, 1] (not edm, where t is sigma)"):format(
      spacing), 3)
  end
  local N = schedule.n or o.n or 1000
  if o.n and schedule.n and o.n ~= schedule.n then
    error(("grid: n = %s but the schedule has %d training steps"):format(tostring(o.n), schedule.n), 3)
  end
  local M_ = N
  if o.t_start then
    M_ = math.floor(o.t_start * N + 1e-9)
    if M_ > N then M_ = N end
    if M_ < 1 then error(("grid: t_start = %.17g is below the first training step t = 1/N"):format(o.t_start), 3) end
  end
  if math.type(steps) ~= "integer" or steps > M_ then
    error(("grid: spacing '%s' needs steps <= %d (the training steps in range), got %s"):format(spacing, M_,
      tostring(steps)), 3)
  end
  local ok, ts = pcall(M.discrete_timesteps, spacing, steps, { n = M_, steps_offset = o.steps_offset or 0 })
  if not ok then error("grid: " .. tostring(ts):gsub("^.-discrete_timesteps", "discrete_timesteps"), 3) end
  local out = {}
  for i, v in ipairs(ts) do out[i] = (v + 1) / N end
  local last = o.t_end or 0
  if not (last >= 0 and last < out[#out]) then
    error(("grid: t_end = %.17g must be >= 0 and below the last timestep's t = %.17g"):format(last, out[#out]), 3)
  end
  out[#out + 1] = last
  return out
end

return M
