-- Distance to the exact tilted target against NFE, for the methods that target
-- p(x) exp(lambda r(x)) / Z: best-of-N with importance resampling (the baseline), FK steering
-- (diff and max potentials), Diffusion Tree Sampling (uniform and adaptive construction), and
-- plain sampling for scale.  The problem is the mixture of steer.target.mixture_problem
-- embedded in `dim` dimensions (four unit Gaussians at +-3 on the first two axes, zero mean in
-- the others) with a Gaussian reward of precision `precision` in every dimension centred at
-- (1.5, 1.5, 0, ...): the tilted target is narrower in every dimension, so importance weights
-- of whole samples degenerate as the dimension grows, which is what sequential methods fix.
-- Distance: sliced 2-Wasserstein (128 directions) from each method's output samples (as many
-- as NFE / steps) to 20000 exact samples of the tilted mixture, mean over `seeds` seeds; the
-- floor is the same distance for exact samples of the same size.
--
--   lua5.4 scripts/steer_mixture.lua [dim = 16] [precision = 3] [seeds = 3] [out_dir = build/steer]
--
-- Writes out_dir/mixture-<dim>d.md (a Markdown table) and .json.
local diffuse = require("diffuse")
local steer = diffuse.steer
local json = require("diffuse.json")
local util = require("diffuse.util")

local dim = tonumber(arg and arg[1]) or 16
local precision = tonumber(arg and arg[2]) or 3
local seeds = tonumber(arg and arg[3]) or 3
local out_dir = arg and arg[4] or "build/steer"
os.execute("mkdir -p '" .. out_dir .. "'")

local STEPS = 50
local BUDGETS = { 1000, 10000, 100000 }

local function problem()
  if dim == 2 then return steer.target.mixture_problem() end
  local means = {}
  for k = 1, 4 do
    local m = {}
    for j = 1, dim do m[j] = 0 end
    means[k] = m
  end
  means[1][1], means[2][1], means[3][2], means[4][2] = -3, 3, 3, -3
  local rm = {}
  for j = 1, dim do rm[j] = 0 end
  rm[1], rm[2] = 1.5, 1.5
  return steer.target.mixture_problem{ means = means, stds = 1,
    reward = steer.rewards.gaussian{ mean = rm, precision = precision } }
end
local P = problem()
local exact = P.tilted:sample(20000, { seed = 999 })
local function distance(x) return steer.target.sliced_wasserstein(x, exact, { projections = 128, seed = 7 }) end

local function chain_opts(seed)
  return { model = P.gmm, schedule = P.schedule, shape = { P.gmm.D }, steps = STEPS, seed = seed }
end
local with = util.merge

-- Each method: run(nfe, seed) -> output samples, the NFE actually spent.
local methods = {
  { name = "plain sampling", run = function(nfe, seed)
    local c = P.chain{ steps = STEPS, seed = seed }
    local x = c:run(c:prior(nfe // STEPS), 1)
    return x, c.nfe
  end },
  { name = "best-of-N, importance resampling", run = function(nfe, seed)
    local n = nfe // STEPS
    local r = steer.best_of_n(with(chain_opts(seed), { reward = P.reward, n = n, batch = math.min(n, 2000),
      select = "resample", keep = n, lambda = P.lambda, resampling = "systematic" }))
    return r.x, r.nfe
  end },
  { name = "FK steering, diff, every step", run = function(nfe, seed)
    local K = nfe // STEPS
    local r = steer.fk(with(chain_opts(seed), { reward = P.reward, lambda = P.lambda, particles = K,
      potential = "diff" }))
    return r.x, r.nfe
  end },
  { name = "FK steering, diff, ESS < 0.5", run = function(nfe, seed)
    local K = nfe // STEPS
    local r = steer.fk(with(chain_opts(seed), { reward = P.reward, lambda = P.lambda, particles = K,
      potential = "diff", ess_threshold = 0.5 }))
    return r.x, r.nfe
  end },
  { name = "FK steering, max, every step", run = function(nfe, seed)
    local K = nfe // STEPS
    local r = steer.fk(with(chain_opts(seed), { reward = P.reward, lambda = P.lambda, particles = K,
      potential = "max" }))
    return r.x, r.nfe
  end },
}

-- Diffusion Tree Sampling, when the module is there: the tree grown to the budget, then as many
-- Boltzmann descents as the other methods return samples.
if pcall(require, "diffuse.steer.dts") and steer.dts then
  for _, sel in ipairs({ "uniform", "boltzmann" }) do
    methods[#methods + 1] = { name = "DTS, " .. sel .. " construction", run = function(nfe, seed)
      local r = steer.dts(with(chain_opts(seed), { reward = P.reward, lambda = P.lambda, nfe = nfe,
        select = sel, samples = nfe // STEPS }))
      return r.x, r.nfe
    end }
  end
end

local results = { dim = dim, precision = precision, steps = STEPS, budgets = BUDGETS, seeds = seeds, rows = {} }
local floor = {}
for b, nfe in ipairs(BUDGETS) do
  local acc = 0
  for s = 1, seeds do acc = acc + distance(P.tilted:sample(nfe // STEPS, { seed = 500 + s })) end
  floor[b] = acc / seeds
end
results.floor = floor
local bar = diffuse.progress.new{ total = #methods * #BUDGETS * seeds, label = "steer mixture", unit = "runs" }
local done = 0
for _, m in ipairs(methods) do
  local row = { name = m.name, distance = {}, nfe = {}, seconds = {} }
  for b, nfe in ipairs(BUDGETS) do
    local acc, spent, t0 = 0, 0, diffuse.wtime()
    for s = 1, seeds do
      local x, used = m.run(nfe, s)
      acc = acc + distance(x)
      spent = spent + used
      done = done + 1
      bar:update(done)
    end
    row.distance[b], row.nfe[b], row.seconds[b] = acc / seeds, spent / seeds, (diffuse.wtime() - t0) / seeds
  end
  results.rows[#results.rows + 1] = row
end
bar:finish()

local md = {}
md[#md + 1] = ("Tilted mixture in %d dimensions (reward precision %g, lambda %g, %d steps, eta = 1): sliced W2 to 20000 exact samples, mean of %d seeds (`lua5.4 scripts/steer_mixture.lua %d %g %d`)."):format(
  dim, precision, P.lambda, STEPS, seeds, dim, precision, seeds)
md[#md + 1] = ""
local head, sep = { "| method |" }, { "| --- |" }
for _, nfe in ipairs(BUDGETS) do
  head[#head + 1] = (" %d NFE |"):format(nfe)
  sep[#sep + 1] = " --- |"
end
md[#md + 1] = table.concat(head)
md[#md + 1] = table.concat(sep)
for _, row in ipairs(results.rows) do
  local cells = { "| " .. row.name .. " |" }
  for b = 1, #BUDGETS do cells[#cells + 1] = (" %.3f |"):format(row.distance[b]) end
  md[#md + 1] = table.concat(cells)
end
local cells = { "| exact samples, same count (floor) |" }
for b = 1, #BUDGETS do cells[#cells + 1] = (" %.3f |"):format(floor[b]) end
md[#md + 1] = table.concat(cells)
local text = table.concat(md, "\n") .. "\n"
io.write(text)
util.write_file(("%s/mixture-%dd.md"):format(out_dir, dim), text)
util.write_file(("%s/mixture-%dd.json"):format(out_dir, dim), json.encode(results) .. "\n")
