-- OLSS (Duan et al., "Optimal Linear Subspace Search: Learning to Accelerate Diffusion
-- Models", arXiv 2308.15070): each step's new x is a linear combination of the starting noise
-- and every model output so far, with per-step coefficients fitted by least squares to a fine
-- reference trajectory.  Sampling is then one model call and one lincomb per step.
--
--   c = olss.fit{model, schedule, nfe, trajectories = 100, ...}   -> plain data (diffuse.json)
--   x = diffuse.sample{model, solver = "olss", coefficients = c, shape, seed}
--
-- The fit follows the sampler's own states: at step i the model is evaluated at the x the
-- fitted steps 1 .. i-1 produced (not at the reference's x, as the paper's code does), so the
-- coefficients are fitted on exactly the outputs they are applied to, and each step corrects
-- the error of the steps before it.
local core = require("diffuse.core")
local util = require("diffuse.util")
local sampler = require("diffuse.sampler")
local grid = require("diffuse.grid")

local M = {}
local F = "search.olss"

local function fail(fname, msg, level) util.fail(fname, msg, (level or 1) + 1) end

local check_int = util.check_int

local function dot(a, b) return a:mul(b):sum() end

-- Least squares min |sum_k c_k B_k - y|^2 over the tensors B_k, by the normal equations in
-- double with a tiny ridge relative to the Gram matrix's diagonal (the model outputs at
-- neighbouring times are nearly collinear).
local function lstsq(B, y, ridge)
  local n = #B
  local G, r = {}, {}
  for i = 1, n do
    G[i] = {}
    r[i] = dot(B[i], y)
  end
  for i = 1, n do
    for j = i, n do
      local v = dot(B[i], B[j])
      G[i][j], G[j] = v, G[j]
      G[j][i] = v
    end
  end
  -- Jacobi scaling keeps the ridge meaningful across columns of different sizes
  local d = {}
  for i = 1, n do d[i] = math.sqrt(math.max(G[i][i], 1e-300)) end
  local A = {}
  for i = 1, n do
    A[i] = {}
    for j = 1, n do A[i][j] = G[i][j] / (d[i] * d[j]) end
    A[i][i] = A[i][i] + ridge
  end
  local inv = require("diffuse.solvers.exponential")._inverse(A, n)
  local c = {}
  for i = 1, n do
    local a = 0
    for j = 1, n do a = a + inv[i][j] * r[j] / d[j] end
    c[i] = a / d[i]
  end
  return c
end
M._lstsq = lstsq

local function out_of(st, x, t, kind)
  local x0, eps = st:eval(x, t, kind)
  return kind == "x0" and x0 or eps, x0
end

local fit_options = { model = true, schedule = true, nfe = true, trajectories = true, seed = true, shape = true,
  dim = true, cond = true, predicts = true, spacing = true, t_start = true, t_end = true, times = true,
  substeps = true, pred = true, ridge = true, progress = true }

-- olss.fit{...} -> {kind = "olss", times, pred, steps = {{x = a, m = {b_1 .. b_i}}, ...}, ...}
function M.fit(o)
  local FN = F .. ".fit"
  o = util.check_options(FN, o, fit_options, 2)
  if o.model == nil then fail(FN, "'model' is required", 2) end
  local sched = o.schedule or (type(o.model) == "table" and o.model.schedule)
  if sched == nil then fail(FN, "'schedule' is required", 2) end
  local times
  if o.times then
    times = grid.times(sched, { times = o.times })
  else
    check_int(FN, "nfe", o.nfe, 1, 2)
    times = grid.times(sched, { spacing = o.spacing or "logSNR", steps = o.nfe, t_start = o.t_start, t_end = o.t_end })
  end
  local n = check_int(FN, "trajectories", o.trajectories or 100, 1, 2)
  local shape = o.shape or { o.dim }
  if type(shape) ~= "table" or #shape < 1 then fail(FN, "give 'dim' or the row 'shape' (e.g. {784})", 2) end
  local pred = o.pred or "data"
  if pred ~= "data" and pred ~= "noise" then fail(FN, ("pred = %s; valid: data, noise"):format(tostring(pred)), 2) end
  local ridge = o.ridge or 1e-10
  local kind = pred == "data" and "x0" or "eps"
  local seed = o.seed or 1
  local full = { n }
  for i, d in ipairs(shape) do full[i + 1] = d end
  local xT = core.randn(full, { seed = seed, draw = 0 }):mul(sched:sigma(times[1]))
  local ref = require("diffuse.search.dcsolver").reference({ model = o.model, schedule = sched, times = times, x = xT,
    substeps = o.substeps, cond = o.cond, predicts = o.predicts })
  -- a state only for its model evaluation (prediction kinds, cond, NFE count)
  local st = sampler.new({ model = o.model, schedule = sched, predicts = o.predicts, cond = o.cond, x = xT,
    solver = "ddim", times = times })
  local N = #times - 1
  local bar = o.progress and require("diffuse.progress").new({ total = N, unit = "steps",
    label = type(o.progress) == "string" and o.progress or ("olss fit nfe " .. N) })
  local basis, steps, rms = { xT }, {}, {}
  local x = xT
  for i = 1, N do
    basis[#basis + 1] = out_of(st, x, times[i], kind)
    local c = lstsq(basis, ref[i + 1], ridge)
    local m = {}
    for k = 2, #c do m[k - 1] = c[k] end
    steps[i] = { x = c[1], m = m }
    x = core.lincomb(basis, c)
    local d = x:sub(ref[i + 1])
    rms[i] = math.sqrt(dot(d, d) / d:numel())
    if bar then bar:update(i) end
  end
  if bar then bar:finish() end
  return { kind = "olss", times = times, pred = pred, steps = steps, nfe = N, trajectories = n, seed = seed,
    train_rms = rms }
end

-- Checks a coefficient table (after loading it from JSON, say) and returns it.
function M.check(c, level)
  local FN = F .. ".check"
  level = (level or 1) + 1
  if type(c) ~= "table" or c.kind ~= "olss" then fail(FN, "expected OLSS coefficients (the result of olss.fit)", level) end
  if type(c.times) ~= "table" or #c.times < 2 then fail(FN, "'times' must list at least 2 times", level) end
  if c.pred ~= "data" and c.pred ~= "noise" then fail(FN, "'pred' must be \"data\" or \"noise\"", level) end
  if type(c.steps) ~= "table" or #c.steps ~= #c.times - 1 then
    fail(FN, ("%d times need %d steps of coefficients"):format(#c.times, #c.times - 1), level)
  end
  for i, s in ipairs(c.steps) do
    if type(s) ~= "table" or type(s.x) ~= "number" or type(s.m) ~= "table" or #s.m ~= i then
      fail(FN, ("steps[%d] must be {x = number, m = {%d numbers}}"):format(i, i), level)
    end
    for k, v in ipairs(s.m) do
      if type(v) ~= "number" then fail(FN, ("steps[%d].m[%d] must be a number"):format(i, k), level) end
    end
  end
  return c
end

-- olss.save(c, path) / olss.load(path): JSON through diffuse.json, written atomically.
function M.save(c, path)
  M.check(c, 2)
  local json = require("diffuse.json")
  return require("diffuse.util").write_file(path, json.encode(c))
end

function M.load(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local text = f:read("a")
  f:close()
  local ok, c = pcall(require("diffuse.json").decode, text)
  if not ok then return nil, tostring(c) end
  local ok2, e2 = pcall(M.check, c)
  if not ok2 then return nil, tostring(e2):gsub("^[^:]*:%d+: ", "") end
  return c
end

-- The "olss" solver: x_{i+1} = a_i x_T + sum_{j <= i} b_ij m_j, m_j the model output (x0 or
-- eps) at point j.  NFE = #times - 1.
sampler.register("olss", {
  family = "fitted", stochastic = false, own_grid = true,
  options = { coefficients = false },
  setup = function(st)
    local c = st.opts.coefficients
    if not c then error("sample: solver 'olss' needs the option coefficients = <the result of olss.fit>", 0) end
    local ok, err = pcall(M.check, c)
    if not ok then error("sample: " .. tostring(err):gsub("^[^:]*:%d+: ", ""), 0) end
    if st.grid_opts and st.grid_opts.steps then
      error("sample: OLSS coefficients carry their own times; do not pass 'steps'", 0)
    end
    st.times = c.times
    st.n = #c.times - 1
    st.mem = { basis = { st.x } }
    st._olss = c
  end,
  step = function(st)
    local c = st._olss
    local i = st.i + 1
    local kind = c.pred == "data" and "x0" or "eps"
    local m, x0 = out_of(st, st.x, c.times[i], kind)
    st.x0 = x0
    -- a new list: states share tables with their clones, never modify them in place
    local basis = { table.unpack(st.mem.basis) }
    basis[#basis + 1] = m
    local cs = { c.steps[i].x, table.unpack(c.steps[i].m) }
    st.x = core.lincomb(basis, cs)
    st.mem = { basis = basis }
  end,
})

return M
