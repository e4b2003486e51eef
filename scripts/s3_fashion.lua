-- The S3 runs behind docs/search.md: searched plans for the shipped Fashion-MNIST denoiser,
-- and the same comparison on a 2-D and a 64-D Gaussian mixture.
--
--   lua5.4 scripts/s3_fashion.lua search NFE [out_dir = build/s3] [generations = 40] [max_seconds = 840]
--       one S3 search at this NFE, FD on 1000 samples (seed 1); archive out_dir/fashion-nfeN.jsonl
--       (a rerun resumes it), best plan out_dir/fashion-s3-nfeN.json
--   lua5.4 scripts/s3_fashion.lua report [out_dir = build/s3] [n = 2000] [nfes = 4,5,6,8,10] [baselines.json]
--       held-out FD (seed 2, n samples) of the searched plans and of the presets: the best
--       presets of each search's stage 1 (seed 1), DDIM, DPM-Solver++(2M) and UniPC bh2 on
--       logSNR, and (given the output of scripts/baselines_fashion.lua) the best configuration
--       of every hand-designed solver over its grids, re-measured on the held-out noise; writes
--       out_dir/fashion.md, fashion.dat, fashion.png (gnuplot) and plans/fashion-s3-nfeN.json
--   lua5.4 scripts/s3_fashion.lua mixtures [out_dir = build/s3] [nfes = 4,5,6,8,10] [factor = 4]
--       the same on the mixtures, fitness = RMS error to the exact ODE solution from `factor`
--       times the held-out measurement's number of starting points (seed 1); held out: the
--       shared problems' own shape, seed 2; out_dir/mixtures.md
local diffuse = require("diffuse")
local search = diffuse.search
local json = require("diffuse.json")

local mode = arg and arg[1] or "search"

local function list_of(s, default)
  if not s or s == "" then return default end
  local out = {}
  for v in s:gmatch("[^,]+") do out[#out + 1] = tonumber(v) end
  return out
end

-- atomic: never a half-written file (diffuse.util.write_file)
local function write(path, text) assert(require("diffuse.util").write_file(path, text)) end

-- Plans at `nfe` grown from a plan found at `from` < nfe: one point inserted per NFE, in the
-- middle of a gap (and, at the last growth, also near each gap's start); at most 40.
local function grow(plan, from, nfe, opts)
  local plans = { plan }
  for k = from + 1, nfe do
    local o = {}
    for key, v in pairs(opts) do o[key] = v end
    o.nfe = k
    local spk = search.space.new(o)
    local nxt = {}
    for _, p in ipairs(plans) do
      for _, q in ipairs(spk:grown(p, k == nfe and { 0.5, 0.1 } or { 0.5 })) do
        if #nxt < 40 then nxt[#nxt + 1] = q end
      end
    end
    plans = nxt
  end
  return plans
end

-- The Fashion-MNIST search space: the full USF space (orders up to 4, both predictions,
-- any derivative points within 4 back, every scaling, correctors), plus the analytic first
-- step when this build's plans have it.
local function fashion_space()
  -- the last time is searched between the schedule's t_end and 0.02 (the baselines try
  -- t_end = 1e-3 and 1e-2 too)
  local sp = { max_order = 4, free_end = { 1e-3, 2e-2 } }
  sp.analytic = true
  return sp
end

local function fashion_run_opts(model)
  -- the analytic first step takes the Gaussian approximation of the data from the model
  return (model and model.analytic) and { analytic = model.analytic } or nil
end

if mode == "search" then
  local nfe = assert(tonumber(arg[2]), "usage: s3_fashion.lua search NFE [out_dir] [generations] [max_seconds]")
  local out_dir = arg[3] or "build/s3"
  local generations = tonumber(arg[4]) or 40
  local max_seconds = tonumber(arg[5]) or 840
  os.execute("mkdir -p '" .. out_dir .. "'")
  local _, minfo = assert(diffuse.models.load("fashion-denoiser"))
  local f = search.fitness.fashion{ n = 1000, seed = 1 }
  -- the initial plans: the named solvers at this NFE, and the plans found at the next smaller
  -- NFE with one point inserted in each gap of their grid (a plan that wastes an evaluation
  -- is a fine start where extra accuracy does not pay)
  local sopts = fashion_space()
  sopts.schedule, sopts.nfe = minfo.schedule, nfe
  local sp = search.space.new(sopts)
  local init = sp:presets()
  for prev = nfe - 1, 1, -1 do
    local fh = io.open(("%s/fashion-s3-nfe%d.json"):format(out_dir, prev))
    if fh then
      local saved = json.decode(fh:read("a"))
      fh:close()
      local plans = grow(saved.plan, prev, nfe, sopts)
      for _, q in ipairs(plans) do init[#init + 1] = q end
      io.stderr:write(("seeded with %d plans grown from the NFE %d result\n"):format(#plans, prev))
      break
    end
  end
  local t0 = diffuse.wtime()
  local best, score, info = search.s3{
    fitness = f, nfe = nfe, schedule = minfo.schedule, seed = 1,
    archive = ("%s/fashion-nfe%d.jsonl"):format(out_dir, nfe),
    generations = generations, initial = 16, population = 12, candidates_per_generation = 400,
    evaluate_per_generation = 8, space = fashion_space(), max_seconds = max_seconds, progress = true,
    final = { fitness = f:with_seed(3), top = 5 }, init = init,
    log = function(line) io.stderr:write(line, "\n") end,
  }
  local seconds = diffuse.wtime() - t0
  print(diffuse.plan.format(best))
  print(("NFE %d: FD %.4f (seed 1, n 1000) after %d plans (%d evaluated now, %d from the archive) in %.0f s"):format(nfe,
    score, info.evaluations, info.evaluated, info.reused, seconds))
  local saved = {
    plan = best, score = score, evaluations = info.evaluations, seconds = seconds, generation = info.generation,
    history = info.history, tag = info.tag, final_score = info.final_score, final = info.final,
  }
  write(("%s/fashion-s3-nfe%d.json"):format(out_dir, nfe), json.encode(saved) .. "\n")
  return
end

if mode == "report" then
  local out_dir = arg[2] or "build/s3"
  local n = tonumber(arg[3]) or 2000
  local nfes = list_of(arg[4], { 4, 5, 6, 8, 10 })
  local model, minfo = assert(diffuse.models.load("fashion-denoiser"))
  local held = search.fitness.fashion{ n = n, seed = 2 }
  os.execute("mkdir -p plans")
  local rows = {}
  local t0 = diffuse.wtime()
  local top_presets = 4
  -- optional: the best configurations of scripts/baselines_fashion.lua (chosen on seed 1),
  -- re-measured here on the same held-out noise
  local bpath = arg[5]
  local bbest = {}
  if bpath and bpath ~= "" then
    local bf = assert(io.open(bpath))
    local bj = json.decode(bf:read("a"))
    bf:close()
    for _, row in ipairs(bj.fashion and bj.fashion.best or {}) do bbest[row.nfe] = row end
  end
  for _, nfe in ipairs(nfes) do
    local path = ("%s/fashion-s3-nfe%d.json"):format(out_dir, nfe)
    local fh = io.open(path)
    if fh then
      local saved = json.decode(fh:read("a"))
      fh:close()
      -- the presets as the search's stage 1 scored them on seed 1, best first
      local sp = search.space.new{ schedule = minfo.schedule, nfe = nfe }
      local presets = sp:presets()
      local arch = search.archive.open(("%s/fashion-nfe%d.jsonl"):format(out_dir, nfe))
      local scored = {}
      for _, p in ipairs(presets) do
        local r = arch:get(saved.tag, sp:key(sp:canonical(p)))
        if r then scored[#scored + 1] = { plan = p, seed1 = r.score } end
      end
      arch:close()
      table.sort(scored, function(a, b) return a.seed1 < b.seed1 end)
      -- named baselines always measured: DDIM, DPM-Solver++(2M), UniPC bh2 on logSNR
      local named = {}
      for _, p in ipairs(presets) do
        if p.name == "DDIM logSNR" or p.name == "DPM-Solver++(2M) logSNR" or p.name == "UniPC-bh2 logSNR" then
          named[p.name] = p
        end
      end
      local measured = {}
      local function measure(p)
        if measured[p.name] == nil then measured[p.name] = held{ solver = "plan", plan = p } end
        return measured[p.name]
      end
      local best_name, best_fd = nil, math.huge
      for i = 1, math.min(top_presets, #scored) do
        local fd = measure(scored[i].plan)
        if fd < best_fd then best_name, best_fd = scored[i].plan.name, fd end
      end
      for name, p in pairs(named) do
        local fd = measure(p)
        if fd < best_fd then best_name, best_fd = name, fd end
      end
      local b = bbest[nfe]
      if b then
        local fd = held(b.run)
        local name = ("%s %s%s"):format(b.label, b.spacing, b.t_end and (" t_end " .. b.t_end) or "")
        if fd < best_fd then best_name, best_fd = name, fd end
      end
      local run = { solver = "plan", plan = saved.plan }
      local ro = fashion_run_opts(model)
      if ro then for k, v in pairs(ro) do run[k] = v end end
      local s3_fd = held(run)
      rows[#rows + 1] = { nfe = nfe, s3 = s3_fd, s3_search = saved.score, preset = best_fd, preset_name = best_name,
        ddim = measured["DDIM logSNR"], dpm2m = measured["DPM-Solver++(2M) logSNR"], unipc = measured["UniPC-bh2 logSNR"],
        plan = saved.plan, evaluations = saved.evaluations, seconds = saved.seconds }
      io.stderr:write(("NFE %d: searched %.3f, best preset %.3f (%s)\n"):format(nfe, s3_fd, best_fd, best_name))
      -- ship the plan with how it was found
      local p = saved.plan
      p.name = ("fashion-s3-nfe%d: S3 search for fashion-denoiser at NFE %d"):format(nfe, nfe)
      local info = {
        method = "S3 (diffuse.search.s3): predictor-screened evolutionary search over the USF plan space",
        fitness = "FD in fashion-classifier features, 1000 class-balanced samples, noise seed 1 (search.fitness.fashion{n = 1000, seed = 1})",
        space = "USF plan space: orders 1-4, data/noise prediction, derivative points up to 4 back, scales taylor/dpmsolver/bh1/bh2/linear, UniC corrector, analytic first step, end time in [0.001, 0.02]",
        init = nfe <= 5 and "the named solvers at this NFE and 16 random plans" or
          "the named solvers at this NFE, 16 random plans, and the plan found at the next smaller NFE grown by one point per NFE",
        final_stage = "the 5 best plans re-scored on noise seed 3 (1000 samples); the best mean of both FDs wins",
        fd_final_stage = saved.final_score, search_seed = 1, evaluations = saved.evaluations, search_seconds = math.floor(saved.seconds + 0.5),
        fd_search = saved.score, fd_heldout = s3_fd, heldout = ("%d samples, noise seed 2"):format(n),
        best_preset = best_name, fd_best_preset_heldout = best_fd,
        command = ("lua5.4 scripts/s3_fashion.lua search %d %s && lua5.4 scripts/s3_fashion.lua report %s"):format(nfe,
          out_dir, out_dir),
      }
      assert(diffuse.plans.save(("plans/fashion-s3-nfe%d.json"):format(nfe), p, info))
    end
  end
  -- the table
  local md = {}
  md[#md + 1] = ("| NFE | S3 searched | best preset (held-out) | change | DDIM | DPM-Solver++(2M) | UniPC bh2 | FD at search (seed 1, n 1000) | plans evaluated | search time |")
  md[#md + 1] = "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  for _, r in ipairs(rows) do
    md[#md + 1] = ("| %d | **%.3f** | %.3f (%s) | %+.0f%% | %.3f | %.3f | %.3f | %.3f | %d | %.0f s |"):format(r.nfe, r.s3, r.preset,
      r.preset_name, 100 * (r.s3 / r.preset - 1), r.ddim or 0 / 0, r.dpm2m or 0 / 0, r.unipc or 0 / 0, r.s3_search, r.evaluations,
      r.seconds)
  end
  md[#md + 1] = ""
  md[#md + 1] = ("Held-out: %d samples, noise seed 2 (the search used 1000 samples, seed 1). Measured in %.0f s by `lua5.4 scripts/s3_fashion.lua report %s %d`."):format(
    n, diffuse.wtime() - t0, out_dir, n)
  for _, r in ipairs(rows) do
    md[#md + 1] = ""
    md[#md + 1] = "```"
    md[#md + 1] = diffuse.plan.format(r.plan)
    md[#md + 1] = "```"
  end
  local text = table.concat(md, "\n") .. "\n"
  write(out_dir .. "/fashion.md", text)
  io.write(text)
  -- the plot
  local dat = out_dir .. "/fashion.dat"
  local cols = { { "s3", "S3 searched" }, { "preset", "best preset" }, { "ddim", "DDIM" }, { "dpm2m", "DPM-Solver++(2M)" },
    { "unipc", "UniPC (bh2)" } }
  local lines = {}
  for i, c in ipairs(cols) do
    lines[#lines + 1] = "# " .. c[2]
    for _, r in ipairs(rows) do if r[c[1]] then lines[#lines + 1] = ("%d %.6f"):format(r.nfe, r[c[1]]) end end
    if i < #cols then lines[#lines + 1] = "\n" end
  end
  write(dat, table.concat(lines, "\n") .. "\n")
  if os.execute("command -v gnuplot > /dev/null 2>&1") then
    local plots = {}
    for i, c in ipairs(cols) do
      plots[#plots + 1] = ("'%s' index %d with linespoints lw %d title '%s'"):format(dat, i - 1, i == 1 and 3 or 1, c[2])
    end
    local gp = io.popen("gnuplot", "w")
    gp:write(table.concat({
      "set terminal pngcairo size 800,500 noenhanced",
      ("set output '%s/fashion.png'"):format(out_dir),
      "set xlabel 'NFE'", "set ylabel 'FD (classifier features), held-out noise'",
      "set xtics (4, 5, 6, 8, 10)", "set grid", "set key top left",
      "set title 'fashion-denoiser: S3-searched plans against hand-designed solvers'",
      "plot " .. table.concat(plots, ", "),
    }, "\n"))
    gp:close()
    print("wrote " .. out_dir .. "/fashion.png")
  else
    print("gnuplot not found (sudo apt-get install gnuplot-nox): no plot")
  end
  return
end

if mode == "mixtures" then
  local out_dir = arg[2] or "build/s3"
  local nfes = list_of(arg[3], { 4, 5, 6, 8, 10 })
  local factor = tonumber(arg[4]) or 4
  os.execute("mkdir -p '" .. out_dir .. "'")
  -- the shared problems of diffuse.search.baselines
  local baselines = require("diffuse.search.baselines")
  local problems = {}
  for _, name in ipairs({ "gmm2d", "gmm64d" }) do
    local pr = baselines.problems[name]()
    problems[#problems + 1] = { name = name, model = pr.model, schedule = pr.schedule, shape = pr.shape }
  end
  local md = { "| problem | NFE | S3 searched | best preset (held-out) | change | plans evaluated | search time |",
    "| --- | --- | --- | --- | --- | --- | --- |" }
  local t0 = diffuse.wtime()
  for _, prob in ipairs(problems) do
    -- the search sees `factor` times more starting points than the held-out measurement:
    -- with 500 points in 64 dimensions, plans fit the particular trajectories (measured)
    local shape = { prob.shape[1] * factor, prob.shape[2] }
    local f = search.fitness.ode_error{ model = prob.model, schedule = prob.schedule, shape = shape, seed = 1 }
    local held = search.fitness.ode_error{ model = prob.model, schedule = prob.schedule, shape = prob.shape, seed = 2 }
    local run = { analytic = diffuse.models.gaussian(prob.model) }
    -- the hand-designed solvers: every preset of the space on three grids, and with
    -- search.baselines each solver at its best grid chosen on the search noise
    local bres = okb and baselines{ fitness = f, nfe = nfes } or nil
    local prev_best, prev_nfe
    for _, nfe in ipairs(nfes) do
      -- seeded like the Fashion searches: the named solvers and the smaller NFE's result grown
      local sopts = { schedule = prob.schedule, nfe = nfe, max_order = 4, analytic = true }
      local sp = search.space.new(sopts)
      local init = sp:presets()
      if prev_best then
        for _, q in ipairs(grow(prev_best, prev_nfe, nfe, sopts)) do init[#init + 1] = q end
      end
      local best, _, info = search.s3{ fitness = f, nfe = nfe, schedule = prob.schedule, seed = 1, generations = 50,
        archive = ("%s/mixture-%s-nfe%d.jsonl"):format(out_dir, prob.name:gsub("[^%w]", ""), nfe),
        space = { max_order = 4, analytic = true }, run = run, init = init,
        final = { fitness = f:with_seed(3), top = 5 } }
      prev_best, prev_nfe = best, nfe
      -- the presets: chosen on the search noise (seed 1), reported on the held-out noise
      local best_name, best_p, best_s1 = nil, nil, math.huge
      for _, p in ipairs(sp:presets()) do
        local sc = f{ solver = "plan", plan = p }
        if sc < best_s1 then best_name, best_p, best_s1 = p.name, p, sc end
      end
      local best_preset = held{ solver = "plan", plan = best_p }
      if bres and bres.best[nfe] and bres.best[nfe].score < best_s1 then
        local b = bres.best[nfe]
        best_name, best_preset = ("%s %s"):format(b.label, b.spacing), held(b.run)
      end
      local hr = { solver = "plan", plan = best }
      for k, v in pairs(run or {}) do hr[k] = v end
      local sc = held(hr)
      md[#md + 1] = ("| %s | %d | **%.3g** | %.3g (%s) | %+.0f%% | %d | %.0f s |"):format(prob.name, nfe, sc, best_preset,
        best_name, 100 * (sc / best_preset - 1), info.evaluations, info.seconds)
      io.stderr:write(md[#md], "\n")
    end
  end
  md[#md + 1] = ""
  md[#md + 1] = ("RMS distance to the exact ODE solution (rk45, tolerance 1e-7) from held-out noise (seed 2, %d x %d and %d x %d points; the search used seed 1 with %d times as many). The preset column is the named solver of the space at that NFE (DDIM, DPM-Solver++ 2M/3M, UniPC bh1/bh2 orders 2-3, DEIS 2/3 on logSNR, uniform and quadratic time grids)%s with the lowest error on the search noise, reported on the held-out noise; the searches seed each NFE with the named solvers and the plans of the next smaller NFE grown by one point, and re-score their 5 best on noise seed 3. Measured in %.0f s by `lua5.4 scripts/s3_fashion.lua mixtures %s`."):format(
    problems[1].shape[1], problems[1].shape[2], problems[2].shape[1], problems[2].shape[2], factor,
    okb and " or search.baselines' best configuration" or "", diffuse.wtime() - t0, out_dir)
  local text = table.concat(md, "\n") .. "\n"
  write(out_dir .. "/mixtures.md", text)
  io.write(text)
  return
end

error("usage: s3_fashion.lua search NFE [out_dir] | report [out_dir] [n] | mixtures [out_dir]")
