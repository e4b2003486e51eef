-- Reward against compute on the shipped Fashion-MNIST denoiser, for every steering method:
-- mean reward, best reward and FD of the returned samples against the NFE spent per returned
-- sample.  Two rewards: "class" = log p(class k | x) under the shipped classifier (FD against
-- the test images of class k), and "png" = minus the PNG-compressed size in kB (FD against the
-- whole test set).  Every method returns S samples per budget; budgets are B NFE per returned
-- sample (the chain has 20 steps, so B / 20 is the number of chains per sample):
--   best-of-N (stochastic kernel) and random search (deterministic): S searches of N = B / 20;
--   importance resampling: S draws, each from N = B / 20 samples weighted by exp(lambda r);
--   zero-order and path search: S searches whose settings spend about B;
--   SVDD: S samples with M = B / 20 candidates per step (one batch);
--   FK steering: S runs of K = B / 20 particles, one sample resampled by the final weights;
--   FKC (class reward only): S runs of the Feynman-Kac corrector towards the CFG target of the
--   class at scale 3, B / 40 particles (two evaluations per particle and step), one sample each;
--   DTS: one tree grown to S * B NFE, then S Boltzmann descents (the tree is reused);
--   DTS*: S trees of B NFE grown 4 descents per round, the best leaf of each (UCT exploration
--   0.1 for the class reward, 0.01 for the PNG reward, whose values spread ten times less).
-- Mean reward = mean over the S returned samples; best = the largest of them; FD in the
-- classifier's feature space (biased upward by the small S, the same S for every method).
--
--   lua5.4 scripts/steer_fashion.lua [S = 64] [out_dir = build/steer] [only = all] [class = 8]
--
-- only: reward names and/or method names separated by ';' (the other rows come from an
-- earlier results.json in out_dir; "none" redraws the table and plot from it).  Writes out_dir/fashion.md, results.json, fashion.png.
local diffuse = require("diffuse")
local steer = diffuse.steer
local metrics = diffuse.metrics
local json = require("diffuse.json")
local util = require("diffuse.util")

local S = tonumber(arg and arg[1]) or 64
local out_dir = arg and arg[2] or "build/steer"
local only = arg and arg[3]
local CLASS = tonumber(arg and arg[4]) or 8
os.execute("mkdir -p '" .. out_dir .. "'")

local STEPS = 20
local BUDGETS = { 80, 320, 1280 }
local SEED = 1

local model = assert(diffuse.models.load("fashion-denoiser"))
local fr = assert(metrics.fashion_reference())
local test, features, ref_all = fr.test, fr.features, fr.reference
local rows_k = {}
for i, l in ipairs(test.labels) do if l == CLASS then rows_k[#rows_k + 1] = i end end
local ref_class = metrics.stats(features(test.images:gather(rows_k)))

local rewards = {
  { name = "class", reward = steer.rewards.class_logprob{ class = CLASS }, lambda = 10, exploration = 0.1, ref = ref_class,
    title = ("log p(class %d | x)"):format(CLASS) },
  { name = "png", reward = steer.rewards.png_size(), lambda = 100, exploration = 0.01, ref = ref_all,
    title = "-PNG size (kB)" },
}

local function chain_opts(seed, eta)
  return { model = model, shape = { 1, 28, 28 }, steps = STEPS, seed = seed, eta = eta }
end
local with = util.merge

-- Collects S one-sample results into (x, nfe).
local function gather_runs(count, fn)
  local xs, nfe = {}, 0
  for s = 1, count do
    local x, used = fn(s)
    xs[s], nfe = x, nfe + used
  end
  local shape = xs[1]:shape()
  shape[1] = count
  local out = diffuse.zeros(shape)
  for s = 1, count do out:narrow(1, s, 1):copy_(xs[s]:narrow(1, 1, 1)) end
  return out, nfe
end

-- Each method: run(R, B) -> S samples and the total NFE spent.  R = the reward entry.
local methods = {
  { name = "plain", budgets = { 20 }, run = function(R, B)
    local c = steer.chain.new(chain_opts(SEED, 1))
    local x = c:run(c:prior(S), 1)
    return x, c.nfe
  end },
  { name = "best-of-N", run = function(R, B)
    return gather_runs(S, function(s)
      local r = steer.best_of_n(with(chain_opts(SEED * 1000 + s, 1), { reward = R.reward, n = B // STEPS }))
      return r.x, r.nfe
    end)
  end },
  { name = "importance resampling", run = function(R, B)
    return gather_runs(S, function(s)
      local r = steer.best_of_n(with(chain_opts(SEED * 1000 + s, 1), { reward = R.reward, n = B // STEPS,
        select = "resample", lambda = R.lambda }))
      return r.x, r.nfe
    end)
  end },
  { name = "random search", run = function(R, B)
    return gather_runs(S, function(s)
      local r = steer.random_search(with(chain_opts(SEED * 1000 + s, 0), { reward = R.reward, n = B // STEPS }))
      return r.x, r.nfe
    end)
  end },
  { name = "zero-order", run = function(R, B)
    local settings = { [80] = { 3, 1 }, [320] = { 5, 3 }, [1280] = { 9, 7 } }
    local cand, it = table.unpack(settings[B])
    return gather_runs(S, function(s)
      local r = steer.zero_order(with(chain_opts(SEED * 1000 + s, 0), { reward = R.reward, candidates = cand,
        iterations = it }))
      return r.x, r.nfe
    end)
  end },
  { name = "path search", run = function(R, B)
    local settings = { [80] = { 1, 2 }, [320] = { 2, 5 }, [1280] = { 4, 10 } }
    local paths, cand = table.unpack(settings[B])
    return gather_runs(S, function(s)
      local r = steer.path_search(with(chain_opts(SEED * 1000 + s, 0), { reward = R.reward, paths = paths,
        candidates = cand, start = 5 }))
      return r.best.x, r.nfe
    end)
  end },
  { name = "SVDD", run = function(R, B)
    local r = steer.svdd(with(chain_opts(SEED, 1), { reward = R.reward, n = S, candidates = B // STEPS }))
    return r.x, r.nfe
  end },
  { name = "FK steering", run = function(R, B)
    return gather_runs(S, function(s)
      local r = steer.fk(with(chain_opts(SEED * 1000 + s, 1), { reward = R.reward, lambda = R.lambda,
        particles = B // STEPS, potential = "diff", samples = 1 }))
      return r.x, r.nfe
    end)
  end },
}
-- Feynman-Kac correctors target the classifier-free-guidance distribution of the class
-- (scale 3) rather than a reward: class reward only; two NFE per particle per step.
methods[#methods + 1] = { name = "FKC (CFG target)", only_reward = "class", run = function(R, B)
  return gather_runs(S, function(s)
    local o = with(chain_opts(SEED * 1000 + s, 1), { spacing = "logSNR", cond = CLASS, target = "cfg", scale = 3,
      particles = math.max(1, B // (2 * STEPS)), samples = 1, ess_threshold = 0.5 })
    local r = steer.fkc(o)
    return r.x, r.nfe
  end)
end }
if pcall(require, "diffuse.steer.dts") and steer.dts then
  methods[#methods + 1] = { name = "DTS", run = function(R, B)
    local r = steer.dts(with(chain_opts(SEED, 1), { reward = R.reward, lambda = R.lambda, nfe = S * B, samples = S }))
    return r.x, r.nfe
  end }
  methods[#methods + 1] = { name = "DTS*", run = function(R, B)
    return gather_runs(S, function(s)
      -- small rounds: a round's descents all see the tree as it was before the round
      local r = steer.dts_star(with(chain_opts(SEED * 1000 + s, 1), { reward = R.reward, lambda = R.lambda, nfe = B,
        batch = 4, exploration = R.exploration }))
      return r.best.x, r.nfe
    end)
  end }
end

local function wanted(name)
  if not only or only == "all" then return true end
  for part in only:gmatch("[^;]+") do if part == name then return true end end
  return false
end

local results_path = out_dir .. "/results.json"
local results = {}
do
  local f = io.open(results_path)
  if f then
    results = json.decode(f:read("a")) or {}
    f:close()
  end
end
results.S, results.steps, results.class = S, STEPS, CLASS
results.rows = results.rows or {}
local function key(rn, mn) return rn .. "/" .. mn end

local total = 0
for _, R in ipairs(rewards) do
  for _, m in ipairs(methods) do
    if (wanted(R.name) or wanted(m.name)) and (not m.only_reward or m.only_reward == R.name) then
      total = total + #(m.budgets or BUDGETS)
    end
  end
end
local bar = diffuse.progress.new{ total = math.max(total, 1), label = "steer fashion", unit = "points" }
local done = 0
for _, R in ipairs(rewards) do
  for _, m in ipairs(methods) do
    if (wanted(R.name) or wanted(m.name)) and (not m.only_reward or m.only_reward == R.name) then
      local points = {}
      for _, B in ipairs(m.budgets or BUDGETS) do
        local t0 = diffuse.wtime()
        local x, nfe = m.run(R, B)
        local secs = diffuse.wtime() - t0
        x = x:clamp(-1, 1)
        local rv = steer.rewards.evaluate(R.reward, x)
        local mean, best = 0, -math.huge
        for _, v in ipairs(rv) do mean, best = mean + v / #rv, math.max(best, v) end
        local fd = metrics.frechet_distance(metrics.stats(features(x)), R.ref)
        points[#points + 1] = { budget = B, nfe = nfe / #x, mean = mean, best = best, fd = fd, seconds = secs }
        if B == (m.budgets or BUDGETS)[#(m.budgets or BUDGETS)] then
          diffuse.image.write_grid(("%s/%s-%s.png"):format(out_dir, R.name, m.name:gsub("[^%w]+", "_")),
            x:narrow(1, 1, math.min(#x, 32)), { nrow = 8 })
        end
        done = done + 1
        bar:update(done, { method = m.name })
      end
      results.rows[key(R.name, m.name)] = points
    end
  end
end
bar:finish()

-- The table: one block per reward, a row per (method, budget).
local md = {}
md[#md + 1] = ("Fashion-MNIST denoiser, %d-step chain, %d returned samples per point, class %d (`lua5.4 scripts/steer_fashion.lua %d`)."):format(
  STEPS, S, CLASS, S)
for _, R in ipairs(rewards) do
  md[#md + 1] = ""
  md[#md + 1] = ("**%s** (lambda = %g for the tilted-target methods)"):format(R.title, R.lambda)
  md[#md + 1] = ""
  md[#md + 1] = "| method | NFE per sample | mean reward | best reward | FD | seconds |"
  md[#md + 1] = "| --- | --- | --- | --- | --- | --- |"
  for _, m in ipairs(methods) do
    for _, p in ipairs(results.rows[key(R.name, m.name)] or {}) do
      md[#md + 1] = ("| %s | %.0f | %.3f | %.3f | %.2f | %.1f |"):format(m.name, p.nfe, p.mean, p.best, p.fd, p.seconds)
    end
  end
end
local text = table.concat(md, "\n") .. "\n"
io.write(text)
util.write_file(out_dir .. "/fashion.md", text)
util.write_file(results_path, json.encode(results) .. "\n")

-- The plot: for each reward, mean reward, best reward and FD against NFE per sample (log x).
if os.execute("command -v gnuplot > /dev/null 2>&1") then
  local dat = out_dir .. "/fashion.dat"
  local blocks, idx = {}, {}
  for _, R in ipairs(rewards) do
    for mi, m in ipairs(methods) do
      local pts = results.rows[key(R.name, m.name)]
      if pts and #pts > 0 then
        local b = { "# " .. R.name .. " " .. m.name }
        for _, p in ipairs(pts) do b[#b + 1] = ("%g %g %g %g"):format(p.nfe, p.mean, p.best, p.fd) end
        blocks[#blocks + 1] = table.concat(b, "\n")
        idx[#idx + 1] = { reward = R.name, name = m.name, index = #blocks - 1, style = mi - 1 }
      end
    end
  end
  util.write_file(dat, table.concat(blocks, "\n\n\n") .. "\n")
  local lines = {
    "set terminal pngcairo size 1500,900 noenhanced", ("set output '%s/fashion.png'"):format(out_dir),
    "set multiplot layout 2,3", "set logscale x", "set grid", "set key bottom right font ',8'",
    "set xlabel 'NFE per returned sample'",
  }
  for _, R in ipairs(rewards) do
    for col, what in ipairs({ "mean reward", "best reward", "FD" }) do
      local plots = {}
      for _, e in ipairs(idx) do
        if e.reward == R.name then
          -- a method keeps its line style in every panel
          local k = e.style
          plots[#plots + 1] = ("'%s' index %d using 1:%d with linespoints lt %d dt %d pt %d title '%s'"):format(dat,
            e.index, col + 1, k % 8 + 1, k // 8 + 1, k % 8 + 1, e.name)
        end
      end
      lines[#lines + 1] = ("set title '%s: %s'"):format(R.title, what)
      lines[#lines + 1] = ("set ylabel '%s'"):format(what)
      -- a reward not measured yet leaves its panels empty
      lines[#lines + 1] = #plots > 0 and "plot " .. table.concat(plots, ", ") or "set multiplot next"
    end
  end
  lines[#lines + 1] = "unset multiplot"
  local gp = io.popen("gnuplot", "w")
  gp:write(table.concat(lines, "\n"))
  gp:close()
  print("wrote " .. out_dir .. "/fashion.png")
else
  print("gnuplot not found: install it (sudo apt-get install gnuplot-nox) for the plot; the table is in " .. out_dir)
end
