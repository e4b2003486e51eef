-- The sampler state and the sample{} loop.
--
-- A run is a state that a solver advances one step at a time.  The state holds the current
-- x (always in the schedule's own space: x = alpha x0 + sigma eps), the time grid, the step
-- index, the count of model evaluations, the noise source, and the solver's private memory
-- (state.mem: history buffers).  States can be cloned and re-indexed by rows (gather), which
-- particle filters and tree search need; both work because tensors stored in a state are
-- never modified in place: a step always makes new tensors.
--
-- A solver is a table registered with sampler.register(name, solver):
--   family        "exponential" | "sigma" | "adaptive" | ...   (for docs and listings)
--   stochastic    true if it draws noise
--   options       { name = default, ... } extra options it accepts in sample{}
--   setup(state)  prepares state.times (if it builds its own grid), state.n, state.mem
--   step(state)   advances one step: sets state.x (a new tensor), state.x0 (latest data estimate)
-- The loop increments state.i after each step and calls the callback.
local core = require("diffuse.core")
local schedule_mod = require("diffuse.schedule")
local grid = require("diffuse.grid")
local predict = require("diffuse.predict")

local M = {}
local solvers = {}
M.solvers = solvers

function M.register(name, solver)
  assert(type(solver.step) == "function", "solver needs a step function")
  solver.name = name
  solver.options = solver.options or {}
  solvers[name] = solver
end

local function sorted_keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out)
  return out
end

function M.names() return sorted_keys(solvers) end

local State = {}
State.__index = State
M.State = State

-- Options every run accepts (solvers add their own).
local common = {
  model = true, schedule = true, solver = true, steps = true, spacing = true, t_start = true,
  t_end = true, times = true, rho = true, sigma_min = true, sigma_max = true, steps_offset = true, x = true,
  shape = true, seed = true, noise = true, cond = true, callback = true, predicts = true,
  offset = true, progress = true,
}

local function fail(msg, level) error("sample: " .. msg, (level or 1) + 1) end

-- Model evaluation: returns x0, eps at (x, t) and counts one NFE.  need = "x0" or "eps"
-- computes only that one (the other comes back nil).  The model gets a fourth argument, the
-- call context {state = this state, skip = extra.skip}: neural models read `skip` (residual
-- blocks to leave out), and wrappers such as guidance keep per-run, per-row memory in
-- state.aux, which clone() and gather() copy like the solver's memory.
function State:eval(x, t, need, extra)
  local p = self:point(t)
  local out = self.model(x, p, self.cond, { state = self, skip = extra and extra.skip })
  if getmetatable(out) == nil or type(out.shape) ~= "function" then
    fail(("the model returned %s, not a tensor (at t = %.6g)"):format(type(out), t), 2)
  end
  self.nfe = self.nfe + 1
  local x0, eps = predict.to_x0_eps(self.predicts, out, x, p, need)
  return x0, eps
end

-- The schedule's values at t (cached: grids revisit the same times).
function State:point(t)
  local c = self._points[t]
  if not c then
    c = self.schedule:point(t)
    self._points[t] = c
  end
  return c
end

-- The next standard-normal tensor shaped like x: the user's noise list if one was given,
-- else the counter-based generator (row i of draw k depends only on seed, i, k).
function State:draw()
  self.draws = self.draws + 1
  if self.noise then
    local z = self.noise[self.draws]
    if z == nil then
      fail(("noise list has %d tensors, the solver needs draw %d (step %d)"):format(#self.noise, self.draws,
        self.i + 1), 2)
    end
    if type(z) == "table" and getmetatable(z) == nil then z = core.tensor(z) end
    return z
  end
  return core.randn(self.x:shape(), { seed = self.seed, offset = self.offset, draw = self.draws })
end

function State:done() return self.i >= self.n end

-- Advance one step; returns the state.  Raises when x becomes non-finite, naming the step.
function State:step()
  if self:done() then fail("the run is already finished", 2) end
  local step = self.i + 1
  self.solver.step(self)
  self.i = step
  local s = self.x:sum()
  if s ~= s or s == math.huge or s == -math.huge then
    fail(("x became non-finite at step %d of %d (solver %s, t = %.6g)"):format(step, self.n, self.solver.name,
      self.t or self.times[math.min(step + 1, #self.times)]), 2)
  end
  if self.callback then
    self.callback({ x = self.x, x0 = self.x0, i = step, n = self.n, t = self.t, nfe = self.nfe, state = self })
  end
  return self
end

function State:run()
  while not self:done() do self:step() end
  return self.x
end

local function is_tensor(v) return getmetatable(v) ~= nil and type(v) == "userdata" and v.gather ~= nil end

-- Copies tables recursively, shares tensors (never modified in place), maps them with f if given.
local function copy(v, f, seen)
  if type(v) ~= "table" or getmetatable(v) ~= nil then
    if f and is_tensor(v) then return f(v) end
    return v
  end
  if seen[v] then return seen[v] end
  local out = {}
  seen[v] = out
  for k, x in pairs(v) do out[k] = copy(x, f, seen) end
  return out
end

local function clone_state(self, f)
  local c = setmetatable({}, State)
  for k, v in pairs(self) do c[k] = v end
  c.mem = copy(self.mem, f, {})
  c.aux = copy(self.aux, f, {})
  if f then
    c.x = f(self.x)
    if self.x0 then c.x0 = f(self.x0) end
    -- a per-row condition (class labels) follows its rows; a shared one stays shared
    if is_tensor(self.cond) then c.cond = f(self.cond) end
  end
  c._points = self._points
  return c
end

-- An independent copy: stepping one does not affect the other.
function State:clone() return clone_state(self, nil) end

-- A state whose batch rows are rows[1], rows[2], ... of this one (1-based, repeats allowed):
-- every batch tensor in x and the solver's memory is gathered.
function State:gather(rows)
  local n = #self.x
  return clone_state(self, function(t)
    if #t == n then return t:gather(rows) end
    return t
  end)
end

-- Build a state from the sample{} options.  (extra: call depth added by wrappers, so errors
-- point at the user's line.)
function M.new(o, extra)
  local function fail_here(msg) fail(msg, 3 + (extra or 0)) end
  if type(o) ~= "table" then fail_here("options table expected") end
  local name = o.solver or "dpmpp_2m"
  local solver = solvers[name]
  if not solver then
    fail_here(("unknown solver '%s'; valid: %s"):format(tostring(name), table.concat(M.names(), ", ")))
  end
  for k in pairs(o) do
    if not common[k] and solver.options[k] == nil then
      local valid = sorted_keys(common)
      for _, s in ipairs(sorted_keys(solver.options)) do valid[#valid + 1] = s end
      table.sort(valid)
      fail_here(("unknown option '%s' for solver %s; valid: %s"):format(tostring(k), name, table.concat(valid, ", ")))
    end
  end
  local model = o.model
  if not model then fail_here("'model' is required (a diffuse model or a function(x, point, cond))") end
  local predicts = o.predicts or (type(model) == "table" and model.predicts) or nil
  if predicts == nil then
    fail_here("say what the model predicts: predicts = 'eps' | 'x0' | 'v' | 'score' | 'flow'")
  end
  if not predict.kinds[predicts] then
    fail_here(("unknown prediction kind '%s' (valid: eps, x0, v, score, flow)"):format(tostring(predicts)))
  end
  local sched = o.schedule or (type(model) == "table" and model.schedule) or nil
  if sched == nil then fail_here("'schedule' is required (e.g. diffuse.schedule.vp_linear{})") end
  if getmetatable(sched) ~= schedule_mod.Schedule then fail_here("'schedule' must be a diffuse schedule") end

  local st = setmetatable({
    model = model, predicts = predicts, schedule = sched, cond = o.cond, solver = solver,
    callback = o.callback, noise = o.noise, seed = o.seed or 0, offset = o.offset or 0,
    i = 0, nfe = 0, draws = 0, mem = {}, aux = {}, _points = {}, opts = {},
  }, State)
  for k, default in pairs(solver.options) do
    local v = o[k]
    if v == nil then v = default end
    if v ~= nil and type(v) ~= type(default) and default ~= false then
      fail_here(("option '%s' of solver %s must be a %s, got %s"):format(k, name, type(default), type(v)))
    end
    st.opts[k] = v
  end
  if o.callback ~= nil and type(o.callback) ~= "function" then fail_here("'callback' must be a function") end
  if o.noise ~= nil and type(o.noise) ~= "table" then fail_here("'noise' must be a list of tensors") end

  -- The grid: a solver may build its own in setup (singlestep solvers do).
  if o.times then
    st.times = grid.times(sched, { times = o.times })
  elseif o.steps then
    st.times = grid.times(sched, {
      spacing = o.spacing or solver.default_spacing or "logSNR", steps = o.steps, t_start = o.t_start,
      t_end = o.t_end, rho = o.rho, sigma_min = o.sigma_min, sigma_max = o.sigma_max,
      steps_offset = o.steps_offset,
    })
  elseif not solver.own_grid then
    fail_here("give 'steps' (with an optional 'spacing') or a list of 'times'")
  end
  st.grid_opts = { steps = o.steps, spacing = o.spacing, t_start = o.t_start, t_end = o.t_end }

  -- The starting x: given, or sigma(t_start) * N(0, I) drawn from the seed (draw 0).
  local t0 = st.times and st.times[1] or o.t_start or sched.t_start
  if o.x ~= nil then
    if not is_tensor(o.x) then fail_here("'x' must be a tensor") end
    st.x = o.x
  else
    if o.shape == nil then fail_here("give the starting 'x' or a 'shape' to draw it from 'seed'") end
    st.x = core.randn(o.shape, { seed = st.seed, offset = st.offset, draw = 0 }):mul(sched:sigma(t0))
  end
  if solver.setup then solver.setup(st) end
  st.n = st.n or (#st.times - 1)
  return st
end

-- diffuse.sample{...} -> x, info   (info: nfe, steps, solver, state)
-- progress = true (or a label string) shows a progress line with the ETA on stderr.
function M.sample(o)
  local st = M.new(o, 1)
  if o.progress then
    local bar = require("diffuse.progress").new{ total = st.n, unit = "steps",
      label = type(o.progress) == "string" and o.progress or ("sample " .. st.solver.name) }
    while not st:done() do
      st:step()
      bar:update(st.i, { nfe = st.nfe })
    end
    bar:finish({ nfe = st.nfe })
  end
  local x = st:run()
  return x, { nfe = st.nfe, steps = st.n, solver = st.solver.name, state = st }
end

return M
