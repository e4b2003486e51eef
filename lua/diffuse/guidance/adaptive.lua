-- Adaptive Guidance and LinearAG (Castillo et al., "Adaptive Guidance: Training-free
-- Acceleration of Conditional Diffusion Models").
--
-- ag{...}: classifier-free guidance in which each batch row stops evaluating the unconditional
-- branch for the rest of the run once the cosine similarity between its conditional and
-- unconditional predictions exceeds gamma (a one-way switch).  A row that switches at a call
-- still gets the guided prediction of that call; from the next call on it gets the conditional
-- prediction alone.  The unconditional branch runs only on the rows that have not switched
-- (gathered, evaluated, scattered back), and only those rows are counted.
--
-- linear_ag{...}: from call `start` of a run on, the unconditional prediction is not evaluated
-- but estimated as an affine combination of the current conditional prediction, the previous
-- call's conditional and (estimated) unconditional predictions and x itself, with one set of
-- coefficients per call index, fitted by least squares on full CFG runs (linear_ag_fit).
local core = require("diffuse.core")
local util = require("diffuse.util")
local G = require("diffuse.guidance")
local cfg = require("diffuse.guidance.cfg")

local M = {}

local function copy_table(t)
  local o = {}
  for k, v in pairs(t) do o[k] = v end
  return o
end

----------------------------------------------------------------------------------------------
-- Adaptive Guidance

local ag_valid = copy_table(cfg.valid)
ag_valid.gamma = true
ag_valid.measure = true
local ag_defaults = copy_table(cfg.defaults)
ag_defaults.gamma = 0.99
-- Why x0 by default: on the shipped denoiser (vp_cosine) the eps-space cosine is >= 0.9999 for
-- every row during the first steps (x / sigma dominates both noise predictions) and falls late
-- in the run, so an eps-space switch fires at once or not at all; the x0-space cosine rises
-- steadily from about 0.85 to 1 (docs/guidance.md).
ag_defaults.measure = "x0"

-- Row lists of the not-yet-switched rows: all rows when nothing switched.
local function active_rows(switched, n)
  local rows = {}
  if switched == nil then
    for i = 1, n do rows[i] = i end
    return rows
  end
  local s = switched:totable()
  for i = 1, n do if s[i] == 0 then rows[#rows + 1] = i end end
  return rows
end

-- ag{model, scale, gamma = 0.99, measure = "x0", space = "eps", rescale = 0, interval = nil, interval_on}
-- The cosine similarity is measured in `measure` space ("x0", "eps" or "v"); `space` is the
-- rescale's.  gamma >= 1 never switches (plain CFG).
function M.ag(o)
  local F = "guidance.ag"
  local g = G.object(F, o, ag_valid, ag_defaults, 2)
  cfg.check_common(F, g.opts, 2)
  G.check_scale(F, "gamma", g.opts.gamma, 2)
  local ms = g.opts.measure
  if ms ~= "x0" and ms ~= "eps" and ms ~= "v" then util.fail(F, ("unknown measure '%s' (valid: eps, v, x0)"):format(tostring(ms)), 2) end
  g.guide = function(self, x, p, cond, ctx)
    local mem = self:memory(x, p, ctx)
    local opts, kind, n = self.opts, self.predicts, #x
    local c = self:eval(x, p, cond, ctx)
    if not cfg.inside(opts, p) then return c end
    local rows = active_rows(mem.switched, n)
    if #rows == 0 then return c end
    local partial = #rows < n
    local u, cp, xp
    if partial then
      u = self:eval(x, p, nil, ctx, rows)
      cp, xp = c:gather(rows), x:gather(rows)
    else
      u = self:eval(x, p, nil, ctx)
      cp, xp = c, x
    end
    local guided = cfg.combine(opts, kind, cp, u, xp, p)
    -- the switch: rows whose predictions agree past gamma stop evaluating u from now on
    if opts.gamma < 1 then
      local cs, us = G.to_space(cp, kind, opts.measure, xp, p), G.to_space(u, kind, opts.measure, xp, p)
      local cos = G.row_cos(cs, us)
      local flags = mem.switched and mem.switched:totable() or nil
      local changed = false
      for j, r in ipairs(rows) do
        if cos[j] > opts.gamma then
          flags = flags or (function() local z = {} for i = 1, n do z[i] = 0 end return z end)()
          flags[r] = 1
          changed = true
        end
      end
      -- a new tensor: tensors kept in a state are never modified in place
      if changed then mem.switched = core.tensor(flags) end
    end
    if partial then return G.scatter_rows(c, rows, guided) end
    return guided
  end
  g.describe = function(self)
    return ("scale %g, gamma %g in %s"):format(self.opts.scale, self.opts.gamma, self.opts.measure)
  end
  -- The fraction of rows of a state (or of the last bare run) that have switched.
  g.switched = function(self, st)
    local mem = st and st.aux[self.key] or (self._bare and self._bare.mem)
    if not mem or not mem.switched then return 0 end
    return mem.switched:mean()
  end
  return g
end

----------------------------------------------------------------------------------------------
-- LinearAG

M.features = { "c", "c_prev", "u_prev", "x" }

-- The feature tensors at call k (all in the fit space): c_k, c_{k-1}, u_{k-1}, x_k.
local function feature_list(c, mem, x)
  return { c, mem.c_prev, mem.u_prev, x }
end

-- Solves the symmetric system A b = r (a small dense list of lists) by Gaussian elimination with
-- partial pivoting, after adding a tiny ridge (features can be nearly collinear).
local function solve(A, r)
  local n = #r
  local m = {}
  local tr = 0
  for i = 1, n do tr = tr + A[i][i] end
  local ridge = 1e-9 * tr / n
  for i = 1, n do
    m[i] = {}
    for j = 1, n do m[i][j] = A[i][j] + (i == j and ridge or 0) end
    m[i][n + 1] = r[i]
  end
  for col = 1, n do
    local piv = col
    for i = col + 1, n do if math.abs(m[i][col]) > math.abs(m[piv][col]) then piv = i end end
    m[col], m[piv] = m[piv], m[col]
    local d = m[col][col]
    if d == 0 then return nil end
    for i = col + 1, n do
      local f = m[i][col] / d
      for j = col, n + 1 do m[i][j] = m[i][j] - f * m[col][j] end
    end
  end
  local b = {}
  for i = n, 1, -1 do
    local s = m[i][n + 1]
    for j = i + 1, n do s = s - m[i][j] * b[j] end
    b[i] = s / m[i][i]
  end
  return b
end
M._solve = solve

local fit_valid = { model = true, scale = true, space = true, run = true, runs = true, predicts = true }

-- linear_ag_fit{model, scale, run = {sample{} options but model}, runs = 1, space = "eps"}
--   -> coefficients as plain data: {space, scale, features, calls, coefficients = {[k] = {b1..b4}}}
-- Runs full CFG `runs` times (seeds run.seed, run.seed + 1, ...) and fits, for every call index
-- k >= 2, u_k ~ b1 c_k + b2 c_{k-1} + b3 u_{k-1} + b4 x_k by least squares over every element
-- of every row (with the true u_{k-1}).  The coefficients belong to that grid and solver.
function M.linear_ag_fit(o)
  local F = "guidance.linear_ag_fit"
  util.check_options(F, o, fit_valid, 2)
  if o == nil or o.model == nil then util.fail(F, "'model' is required", 2) end
  local scale = o.scale or 1
  G.check_scale(F, "scale", scale, 2)
  local space = o.space or "eps"
  if space ~= "eps" and space ~= "x0" and space ~= "v" then util.fail(F, ("unknown space '%s' (valid: eps, x0, v)"):format(tostring(space)), 2) end
  if type(o.run) ~= "table" then util.fail(F, "'run' must be a table of sample{} options (steps, solver, shape, seed, cond, ...)", 2) end
  local runs = o.runs or 1
  if math.type(runs) ~= "integer" or runs < 1 then util.fail(F, "'runs' must be a positive integer", 2) end
  local nf = #M.features
  local acc = {} -- acc[k] = {A = nf x nf, r = nf}
  local calls = 0
  local rec = cfg.cfg{ model = o.model, scale = scale, predicts = o.predicts }
  rec.guide = function(self, x, p, cond, ctx)
    local mem = self:memory(x, p, ctx)
    local kind = self.predicts
    local c = self:eval(x, p, cond, ctx)
    local u = self:eval(x, p, nil, ctx)
    local cs, us = G.to_space(c, kind, space, x, p), G.to_space(u, kind, space, x, p)
    mem.k = (mem.k or 0) + 1
    local k = mem.k
    if k > calls then calls = k end
    if k >= 2 then
      local f = feature_list(cs, mem, x)
      local a = acc[k] or { A = {}, r = {} }
      acc[k] = a
      for i = 1, nf do
        a.A[i] = a.A[i] or {}
        a.r[i] = (a.r[i] or 0) + f[i]:mul(us):sum()
        for j = 1, nf do a.A[i][j] = (a.A[i][j] or 0) + f[i]:mul(f[j]):sum() end
      end
    end
    mem.c_prev, mem.u_prev = cs, us
    return core.lincomb({ u, c }, { 1 - scale, scale })
  end
  local sample = require("diffuse.sampler").sample
  for r = 1, runs do
    local opts = copy_table(o.run)
    opts.model = rec
    opts.seed = (o.run.seed or 0) + r - 1
    sample(opts)
  end
  -- a dense list (plain JSON): call 1 has no past, so its entry is empty, like any call whose
  -- system could not be solved; those calls evaluate the unconditional branch
  local coefs = { {} }
  for k = 2, calls do
    local a = acc[k]
    coefs[k] = a and solve(a.A, a.r) or {}
  end
  return { method = "linear_ag", space = space, scale = scale, features = { table.unpack(M.features) }, calls = calls,
    coefficients = coefs }
end

local lag_valid = copy_table(cfg.valid)
lag_valid.fit = true
lag_valid.start = true
local lag_defaults = copy_table(cfg.defaults)

-- linear_ag{model, scale, fit = linear_ag_fit{...}, start = call index (default: half the
-- fitted calls + 1), rescale, interval, interval_on}.  space comes from the fit.
function M.linear_ag(o)
  local F = "guidance.linear_ag"
  local g = G.object(F, o, lag_valid, lag_defaults, 2)
  local fit = g.opts.fit
  if type(fit) ~= "table" or type(fit.coefficients) ~= "table" then
    util.fail(F, "'fit' must be the table linear_ag_fit{...} returns", 2)
  end
  if o.space ~= nil and o.space ~= fit.space then util.fail(F, ("space must be the fit's (%s)"):format(fit.space), 2) end
  g.opts.space = fit.space
  cfg.check_common(F, g.opts, 2)
  local start = g.opts.start or (fit.calls // 2 + 1)
  if math.type(start) ~= "integer" or start < 2 then util.fail(F, "'start' must be an integer call index >= 2", 2) end
  g.opts.start = start
  g.guide = function(self, x, p, cond, ctx)
    local mem = self:memory(x, p, ctx)
    local opts, kind, space = self.opts, self.predicts, self.opts.space
    mem.k = (mem.k or 0) + 1
    local k = mem.k
    local c = self:eval(x, p, cond, ctx)
    local cs = G.to_space(c, kind, space, x, p)
    if not cfg.inside(opts, p) then
      -- no guidance here: the next call has no past unconditional prediction to build on
      mem.c_prev, mem.u_prev = cs, nil
      return c
    end
    local b = fit.coefficients[k]
    local u, us
    if k >= opts.start and b and #b == #M.features and mem.u_prev then
      us = core.lincomb(feature_list(cs, mem, x), b)
      u = G.to_space(us, space, kind, x, p)
    else
      u = self:eval(x, p, nil, ctx)
      us = G.to_space(u, kind, space, x, p)
    end
    mem.c_prev, mem.u_prev = cs, us
    return cfg.combine(opts, kind, c, u, x, p)
  end
  g.describe = function(self)
    return ("scale %g, linear from call %d of %d"):format(self.opts.scale, self.opts.start, fit.calls)
  end
  return g
end

M.methods = { ag = M.ag, linear_ag = M.linear_ag }

M.functions = { linear_ag_fit = M.linear_ag_fit }

return M
