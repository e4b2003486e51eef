-- The hand-designed solvers a searched schedule must beat, each at its best time grid.
--
--   r = baselines{fitness = f, nfe = {4, 5, 6, 8, 10}, solvers = list, spacings = list,
--                 t_ends = list, progress = true, pool = p}
--   r.best[nfe]  -> {label, solver, spacing, t_end, run, score, seconds}
--   r.table      -> every configuration tried: {nfe, label, spacing, t_end, score, nfe_run, seconds}
--
-- A configuration is a solver (a table of sample{} options) on a grid spacing (and an optional
-- t_end) with `steps` chosen so that the run takes exactly the requested NFE; a run whose
-- info.nfe differs is an error, not a silently different budget.
--
-- Shared problems (the exact-model targets every search compares on):
--   baselines.problems.gmm2d()  -> {name, model, schedule, shape}
--   baselines.problems.gmm64d() -> idem
--   baselines.problems.fitness(problem, seed) -> fitness.ode_error on that problem
local util = require("diffuse.util")

local M = {}
local F = "search.baselines"

-- Named solvers of the comparison: DDIM, DPM-Solver++ 2M / 3M (multistep, data prediction),
-- UniPC bh1 / bh2 at orders 2 and 3, DEIS orders 2 and 3.
M.solvers = {
  { label = "DDIM", run = { solver = "ddim" } },
  { label = "DPM-Solver++(2M)", run = { solver = "dpmsolver++_2m" } },
  { label = "DPM-Solver++(3M)", run = { solver = "dpmsolver++_3m" } },
  { label = "UniPC bh1-2", run = { solver = "unipc", variant = "bh1", order = 2 } },
  { label = "UniPC bh1-3", run = { solver = "unipc", variant = "bh1", order = 3 } },
  { label = "UniPC bh2-2", run = { solver = "unipc", variant = "bh2", order = 2 } },
  { label = "UniPC bh2-3", run = { solver = "unipc", variant = "bh2", order = 3 } },
  { label = "DEIS-2", run = { solver = "deis", order = 2 } },
  { label = "DEIS-3", run = { solver = "deis", order = 3 } },
}

M.spacings = { "time_uniform", "logSNR", "time_quadratic", "karras" }

-- false = the schedule's own t_end.
M.t_ends = { false }

local function copy(t)
  local o = {}
  for k, v in pairs(t) do o[k] = v end
  return o
end

local function check_list(fname, name, v, kind)
  if type(v) ~= "table" or #v == 0 then util.fail(fname, ("'%s' must be a non-empty list of %s"):format(name, kind), 3) end
end

-- The run of one configuration at one NFE (every solver of the list takes one NFE per step).
function M.config_run(solver, nfe, spacing, t_end)
  local run = copy(solver.run)
  run.steps, run.spacing = nfe, spacing
  if t_end then run.t_end = t_end end
  return run
end

local function evaluate_all(f, runs, pool)
  if pool then
    return pool:map(function(run)
      local s, info = f(run)
      return { score = s, nfe = info.nfe, seconds = info.seconds }
    end, runs)
  end
  local out = {}
  for i, run in ipairs(runs) do
    local ok, s, info = pcall(f, run)
    if ok then out[i] = { score = s, nfe = info.nfe, seconds = info.seconds }
    else out[i] = { error = tostring(s) } end
  end
  return out
end

function M.run(o)
  o = util.check_options(F, o, { fitness = true, nfe = true, solvers = true, spacings = true, t_ends = true,
    progress = true, pool = true }, 2)
  local f = o.fitness
  if f == nil or (type(f) ~= "table" and type(f) ~= "function") then
    util.fail(F, "'fitness' is required: a fitness from diffuse.search.fitness (or a function(run) -> score, info)", 2)
  end
  local nfes = o.nfe or { 4, 5, 6, 8, 10 }
  if type(nfes) == "number" then nfes = { nfes } end
  check_list(F, "nfe", nfes, "positive integers")
  for _, n in ipairs(nfes) do
    if math.type(n) ~= "integer" or n < 1 then util.fail(F, ("nfe entries must be positive integers, got %s"):format(tostring(n)), 2) end
  end
  local solvers = o.solvers or M.solvers
  check_list(F, "solvers", solvers, "{label, run} tables")
  for i, s in ipairs(solvers) do
    if type(s) ~= "table" or type(s.label) ~= "string" or type(s.run) ~= "table" then
      util.fail(F, ("solvers[%d] must be {label = string, run = {solver = ..., options}}"):format(i), 2)
    end
  end
  local spacings = o.spacings or M.spacings
  check_list(F, "spacings", spacings, "spacing names")
  local t_ends = o.t_ends or M.t_ends
  check_list(F, "t_ends", t_ends, "times (false = the schedule's)")
  require("diffuse.solvers.deis") -- registers the deis solver with sample{}

  local configs = {}
  for _, n in ipairs(nfes) do
    for _, s in ipairs(solvers) do
      for _, sp in ipairs(spacings) do
        for _, te in ipairs(t_ends) do
          configs[#configs + 1] = { nfe = n, solver = s, spacing = sp, t_end = te, run = M.config_run(s, n, sp, te) }
        end
      end
    end
  end
  local bar
  if o.progress then
    bar = require("diffuse.progress").new{ total = #configs, label = type(o.progress) == "string" and o.progress or "baselines",
      unit = "run" }
  end
  local results
  if o.pool then
    local runs = {}
    for i, c in ipairs(configs) do runs[i] = c.run end
    results = evaluate_all(f, runs, o.pool)
  else
    results = {}
    local best_so_far = math.huge
    for i, c in ipairs(configs) do
      results[i] = evaluate_all(f, { c.run })[1]
      if results[i].score and results[i].score < best_so_far then best_so_far = results[i].score end
      if bar then bar:update(i, { best = best_so_far }) end
    end
  end
  if bar then bar:finish() end

  local r = { best = {}, table = {} }
  for i, c in ipairs(configs) do
    local res = results[i]
    if res.score and res.nfe ~= c.nfe then
      error(("%s: %s on %s at %d steps took %s NFE, not %d"):format(F, c.solver.label, c.spacing, c.nfe,
        tostring(res.nfe), c.nfe), 2)
    end
    local row = { nfe = c.nfe, label = c.solver.label, spacing = c.spacing, t_end = c.t_end, score = res.score,
      seconds = res.seconds, error = res.error, run = c.run }
    r.table[#r.table + 1] = row
    if res.score and res.score == res.score then
      local b = r.best[c.nfe]
      if not b or res.score < b.score then r.best[c.nfe] = row end
    end
  end
  -- the best grid of every solver at every NFE ("each with its best time grid")
  r.per_solver = {}
  for _, row in ipairs(r.table) do
    if row.score then
      local key = row.label
      r.per_solver[key] = r.per_solver[key] or {}
      local b = r.per_solver[key][row.nfe]
      if not b or row.score < b.score then r.per_solver[key][row.nfe] = row end
    end
  end
  r.nfe = nfes
  return r
end

-- Markdown table: rows = solvers (each at its best grid), columns = NFE; the best of each column
-- in bold.
function M.format(r, digits)
  local fmt = "%." .. tostring(digits or 3) .. "g"
  local lines = { "| solver (best grid) | " .. table.concat((function()
    local h = {}
    for i, n in ipairs(r.nfe) do h[i] = ("NFE %d"):format(n) end
    return h
  end)(), " | ") .. " |" }
  local sep = { "| ---" }
  for _ = 1, #r.nfe do sep[#sep + 1] = " ---" end
  lines[2] = table.concat(sep, " |") .. " |"
  local labels, seen = {}, {}
  for _, row in ipairs(r.table) do
    if not seen[row.label] then seen[row.label] = true; labels[#labels + 1] = row.label end
  end
  for _, label in ipairs(labels) do
    local cells = { label }
    for _, n in ipairs(r.nfe) do
      local b = r.per_solver[label] and r.per_solver[label][n]
      if b then
        local v = fmt:format(b.score)
        if r.best[n] == b then v = "**" .. v .. "**" end
        cells[#cells + 1] = ("%s (%s%s)"):format(v, b.spacing, b.t_end and (", t_end " .. b.t_end) or "")
      else
        cells[#cells + 1] = "-"
      end
    end
    lines[#lines + 1] = "| " .. table.concat(cells, " | ") .. " |"
  end
  return table.concat(lines, "\n")
end

--------------------------------------------------------------------------------------------
-- Shared exact problems: Gaussian mixtures whose ODE solution the fitness computes exactly.

M.problems = {}

-- 2-D: eight narrow components on a ring of radius 2 around a wider central one, unequal
-- weights: multimodal and with a strongly curved flow near the end.
function M.problems.gmm2d()
  local diffuse = require("diffuse")
  local means, stds, weights = {}, {}, {}
  for k = 1, 8 do
    local a = 2 * math.pi * (k - 1) / 8
    means[k] = { 2 * math.cos(a), 2 * math.sin(a) }
    stds[k] = 0.1
    weights[k] = 1 + (k % 3)
  end
  means[9], stds[9], weights[9] = { 0, 0 }, 0.4, 4
  local model = diffuse.models.gmm{ means = means, stds = stds, weights = weights }
  return { name = "gmm2d", model = model, schedule = diffuse.schedule.vp_linear(), shape = { 1000, 2 } }
end

-- 64-D: 16 components with seeded random means (entries N(0, 1)) and per-dimension variances
-- spread over two decades (0.01 .. 1), unequal weights.
function M.problems.gmm64d()
  local diffuse = require("diffuse")
  local K, D = 16, 64
  local means = diffuse.randn({ K, D }, { seed = 64 })
  local u = diffuse.rand({ K, D }, { seed = 65 }):totable()
  local vars = {}
  for k = 1, K do
    vars[k] = {}
    for d = 1, D do vars[k][d] = 10 ^ (-2 + 2 * u[k][d]) end
  end
  local weights = {}
  for k = 1, K do weights[k] = 1 + (k % 4) end
  local model = diffuse.models.gmm{ means = means, vars = vars, weights = weights }
  return { name = "gmm64d", model = model, schedule = diffuse.schedule.vp_linear(), shape = { 500, 64 } }
end

-- The exact-ODE-error fitness of a problem on noise seed `seed` (1: search, 2: held out).
function M.problems.fitness(problem, seed, o)
  if type(problem) == "string" then
    local mk = M.problems[problem]
    if not mk or problem == "fitness" then util.fail(F .. ".problems.fitness", ("unknown problem '%s'; valid: gmm2d, gmm64d"):format(problem), 2) end
    problem = mk()
  end
  local f = require("diffuse.search.fitness").ode_error{ model = problem.model, schedule = problem.schedule,
    shape = problem.shape, seed = seed or 1, rtol = o and o.rtol }
  return f, problem
end

return setmetatable(M, { __call = function(_, o) return M.run(o) end })
