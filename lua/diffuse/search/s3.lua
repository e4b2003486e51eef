-- S3: predictor-based multi-stage evolutionary search over plans with a fixed NFE budget
-- (after "A Unified Sampling Framework for Solver Searching of Diffusion Probabilistic
-- Models").  Written from the paper's description; see docs/search.md.
--
--   best, score, info = diffuse.search.s3{fitness = f, nfe = 5, schedule = sched, seed = 1,
--     archive = "run.jsonl", generations = 12, population = 16, initial = 24,
--     candidates_per_generation = 300, evaluate_per_generation = 10, pool = nil,
--     progress = true, init = {plans} | nil (the named solvers at this NFE), space = {...}}
--
-- Stage 1 evaluates the initial plans (the presets and random ones) for real.  Every later
-- generation breeds many candidates from the best plans so far (mutation and crossover in
-- diffuse.search.space), ranks them with a predictor retrained on every evaluation so far
-- (diffuse.search.predictor) and evaluates only the top ones (plus a few random picks, so a
-- wrong predictor cannot lock the search in).  All choices come from one seeded generator;
-- evaluations are looked up in the archive before being run, so rerunning with the same
-- options and archive replays the same decisions, skips what was evaluated and continues.
local json = require("diffuse.json")
local util = require("diffuse.util")
local space_mod = require("diffuse.search.space")
local archive_mod = require("diffuse.search.archive")
local predictor_mod = require("diffuse.search.predictor")

local M = {}
local F = "search.s3"

local valid = {
  fitness = true, nfe = true, schedule = true, seed = true, archive = true, generations = true, population = true,
  initial = true, candidates_per_generation = true, evaluate_per_generation = true, explore = true, crossover = true,
  pool = true, progress = true, init = true, space = true, predictor = true, run = true, tag = true, log = true,
  max_seconds = true, min_train = true, final = true, niche = true,
}

-- The function a pool's workers run: item = {plan = p} -> {score = s, nfe, seconds} or
-- {failed = true, error = message}.  Plain data in and out, so it crosses processes.
function M.evaluator(fitness, run)
  return function(item)
    local r = {}
    for k, v in pairs(run or {}) do r[k] = v end
    r.solver = "plan"
    r.plan = item.plan
    local ok, score, info = pcall(fitness, r)
    if not ok then return { failed = true, error = tostring(score) } end
    if type(score) ~= "number" or score ~= score or score == math.huge or score == -math.huge then
      return { failed = true, nfe = info and info.nfe, seconds = info and info.seconds }
    end
    return { score = score, nfe = info and info.nfe, seconds = info and info.seconds }
  end
end

local function is_callable(f)
  if type(f) == "function" then return true end
  local mt = getmetatable(f)
  return mt ~= nil and mt.__call ~= nil
end

-- A name for the search in the archive: budget, fitness kind and noise seed, and the user's tag.
local function default_tag(o, fitness)
  local kind = type(fitness) == "table" and fitness.kind or "fn"
  local fseed = type(fitness) == "table" and fitness.seed or nil
  local n = type(fitness) == "table" and (fitness.n or (fitness.opts and type(fitness.opts.shape) == "table" and
    fitness.opts.shape[1])) or nil
  return ("s3 nfe=%d fitness=%s%s%s seed=%d%s"):format(o.nfe, tostring(kind), n and (" n=" .. n) or "",
    fseed and (" fseed=" .. fseed) or "", o.seed, o.tag and (" " .. o.tag) or "")
end

function M.search(o)
  o = util.check_options(F, o, valid, 2)
  if not is_callable(o.fitness) then util.fail(F, "'fitness' must be a fitness (diffuse.search.fitness) or a function(run) -> score", 2) end
  if math.type(o.nfe) ~= "integer" or o.nfe < 1 then util.fail(F, "'nfe' must be an integer >= 1", 2) end
  local sched = o.schedule or (type(o.fitness) == "table" and o.fitness.opts and (o.fitness.opts.schedule or
    (o.fitness.opts.model and o.fitness.opts.model.schedule)))
  if not sched then util.fail(F, "'schedule' is required (the model's schedule)", 2) end
  local seed = o.seed or 1
  if math.type(seed) ~= "integer" then util.fail(F, "'seed' must be an integer", 2) end
  local generations = o.generations or 12
  local pop_size = o.population or 16
  local n_initial = o.initial or 24
  local n_cand = o.candidates_per_generation or 300
  local n_eval = o.evaluate_per_generation or 10
  local explore = o.explore or 0.2
  local p_cross = o.crossover or 0.3
  local min_train = o.min_train or 8
  local niche = o.niche or 3
  for name, v in pairs({ generations = generations, population = pop_size, initial = n_initial,
    candidates_per_generation = n_cand, evaluate_per_generation = n_eval }) do
    if math.type(v) ~= "integer" or v < 0 then util.fail(F, ("'%s' must be an integer >= 0"):format(name), 2) end
  end
  local sopts = { schedule = sched, nfe = o.nfe }
  for k, v in pairs(o.space or {}) do sopts[k] = v end
  local sp = space_mod.new(sopts)
  local popts = { dim = sp:feature_dim(), seed = seed, epochs = 100, max_pairs = 10000 }
  for k, v in pairs(o.predictor or {}) do popts[k] = v end
  local predictor = predictor_mod.new(popts)
  local tag = default_tag({ nfe = o.nfe, seed = seed, tag = o.tag }, o.fitness)
  local own_archive = type(o.archive) ~= "table"
  local archive = own_archive and archive_mod.open(o.archive) or o.archive
  local rng = space_mod.rng(seed)
  local evaluate_item = M.evaluator(o.fitness, o.run)
  local log = o.log or function() end
  local core = require("diffuse.core")
  local t_start = core.wtime()

  -- the search's own view: every candidate it has scored, in the order it met them
  local seen, scored = {}, {}
  local best
  local new_evals, reused = 0, 0
  local history = {}
  local total = #(o.init or {}) + n_initial + generations * n_eval
  if o.init == nil then total = total + #sp:presets() end
  local bar = o.progress and require("diffuse.progress").new{ total = math.max(total, 1), label = ("s3 nfe %d"):format(o.nfe), unit = "eval" } or nil
  local done = 0

  local function consider(r, plan)
    local entry = { plan = plan, score = r.score, key = r.key, generation = r.generation, features = sp:features(plan) }
    scored[#scored + 1] = entry
    seen[r.key] = entry
    if not best or entry.score < best.score then best = entry end
  end

  -- Evaluates a list of plans (already unique and unseen), reusing archived results.
  -- `via[i]` says how plan i was chosen (init, random, predictor, explore), kept in the archive
  local function evaluate(plans, generation, via)
    local todo, todo_idx = {}, {}
    local results = {}
    for i, p in ipairs(plans) do
      local key = sp:key(p)
      local r = archive:get(tag, key)
      if r then
        results[i] = r
        reused = reused + 1
      else
        todo[#todo + 1] = { plan = p }
        todo_idx[#todo_idx + 1] = i
      end
    end
    local function record(i, res)
      local p = plans[i]
      local r = archive:add({ tag = tag, key = sp:key(p), plan = p, score = res.score, nfe = res.nfe,
        seconds = res.seconds, generation = generation, seed = seed, error = res.error, index = archive.count + 1,
        via = via and via[i] })
      results[i] = r
      new_evals = new_evals + 1
      return r
    end
    local running = best and best.score or math.huge
    if #todo > 0 then
      if o.pool then
        local out = o.pool:map(evaluate_item, todo)
        for j, res in ipairs(out) do record(todo_idx[j], res) end
      else
        for j, item in ipairs(todo) do
          local r = record(todo_idx[j], evaluate_item(item))
          if r.score < running then running = r.score end
          if bar and done + j < bar.total then bar:update(done + j, { best = running }) end
        end
      end
    end
    for i, p in ipairs(plans) do consider(results[i], p) end
    done = done + #plans
    if bar then
      if #todo == 0 then bar:resume_from(done) end
      if done < bar.total then bar:update(done, { best = best and best.score or 0 }) end
    end
  end

  local function unseen(list)
    local out, keys = {}, {}
    for _, p in ipairs(list) do
      local k = sp:key(p)
      if not seen[k] and not keys[k] then
        keys[k] = true
        out[#out + 1] = p
      end
    end
    return out
  end

  -- Stage 1: the initial plans (presets, or the user's) and random ones.
  local init = {}
  for _, p in ipairs(o.init or sp:presets()) do
    local ok, err = sp:check(p)
    if not ok then util.fail(F, ("an initial plan does not fit the space: %s"):format(err), 2) end
    init[#init + 1] = sp:canonical(p)
    init[#init].name = nil
  end
  local random_keys = {}
  for _ = 1, n_initial do
    init[#init + 1] = sp:random(rng)
    random_keys[sp:key(init[#init])] = true
  end
  local stop = function() return false end
  local function run_all(stop_fn)
    stop = stop_fn or stop
    local first = unseen(init)
    local via0 = {}
    for i, p in ipairs(first) do via0[i] = random_keys[sp:key(p)] and "random" or "init" end
    evaluate(first, 0, via0)
    history[#history + 1] = { generation = 0, best = best and best.score, evaluations = #scored }
    log(("s3 nfe %d: generation 0, %d plans, best %.6g"):format(o.nfe, #scored, best and best.score or math.huge))

    for g = 1, generations do
      if stop() then break end
      if o.max_seconds and core.wtime() - t_start > o.max_seconds then break end
      -- the parents: the best `population` plans so far
      local ranked = {}
      for i, e in ipairs(scored) do ranked[i] = { e = e, i = i } end
      table.sort(ranked, function(a, b)
        if a.e.score ~= b.e.score then return a.e.score < b.e.score end
        return a.i < b.i
      end)
      -- at most `niche` parents share their step decisions (differing only in the grid), so
      -- a converged population still explores other structures
      local parents, per = {}, {}
      for i = 1, #ranked do
        if #parents >= pop_size then break end
        local p = ranked[i].e.plan
        local sk = json.encode({ p.steps, p.analytic or false })
        if (per[sk] or 0) < niche then
          per[sk] = (per[sk] or 0) + 1
          parents[#parents + 1] = p
        end
      end
      -- rank-weighted choice: the better parents breed more
      local function parent()
        local i = math.min(rng:int(1, #parents), rng:int(1, #parents))
        return parents[i]
      end
      -- breed candidates
      local cands, keys = {}, {}
      local tries = 0
      while #cands < n_cand and tries < n_cand * 5 do
        tries = tries + 1
        local child
        if #parents >= 2 and rng:bernoulli(p_cross) then
          child = sp:crossover(parent(), parent(), rng)
          if rng:bernoulli(0.5) then child = sp:mutate(child, rng) end
        else
          child = sp:mutate(parent(), rng)
          while rng:bernoulli(0.35) do child = sp:mutate(child, rng) end
        end
        local k = sp:key(child)
        if not seen[k] and not keys[k] then
          keys[k] = true
          cands[#cands + 1] = child
        end
      end
      -- screen: the predictor's top picks, plus random ones
      local chosen, via = {}, {}
      local n_random = math.floor(n_eval * explore + 0.5)
      if #scored >= min_train then
        local X, y = {}, {}
        for i, e in ipairs(scored) do X[i] = e.features; y[i] = e.score end
        predictor:fit(X, y)
        local feats = {}
        for i, c in ipairs(cands) do feats[i] = sp:features(c) end
        local pred = #feats > 0 and predictor:predict(feats) or {}
        local order = {}
        for i = 1, #cands do order[i] = i end
        table.sort(order, function(a, b)
          if pred[a] ~= pred[b] then return pred[a] < pred[b] end
          return a < b
        end)
        local taken = {}
        for j = 1, math.min(n_eval - n_random, #order) do
          chosen[#chosen + 1] = cands[order[j]]
          via[#chosen] = "predictor"
          taken[order[j]] = true
        end
        local rest = {}
        for i = 1, #cands do if not taken[i] then rest[#rest + 1] = i end end
        for _ = 1, math.min(n_random, #rest) do
          local j = rng:int(1, #rest)
          chosen[#chosen + 1] = cands[rest[j]]
          via[#chosen] = "explore"
          table.remove(rest, j)
        end
      else
        for i = 1, math.min(n_eval, #cands) do chosen[i], via[i] = cands[i], "unscreened" end
      end
      evaluate(chosen, g, via)
      history[#history + 1] = { generation = g, best = best.score, evaluations = #scored }
      log(("s3 nfe %d: generation %d, %d plans, best %.6g"):format(o.nfe, g, #scored, best.score))
    end
  end
  if o.progress then
    require("diffuse.progress").with_interrupt(run_all)
  else
    run_all()
  end
  if bar then bar:finish({ best = best and best.score or 0 }) end
  if not best then
    if own_archive then archive:close() end
    util.fail(F, "nothing was evaluated", 2)
  end
  -- Final stage (optional): the top plans re-scored by a second fitness (e.g. the same FD on
  -- other noise); the winner is the best mean of both ranks' scores, which discounts plans
  -- that won on the search noise by luck.  Archived under their own tag, so they resume too.
  local final
  if o.final then
    local fo = o.final
    local ff = fo.fitness
    if not is_callable(ff) then util.fail(F, "final.fitness must be a fitness or function", 2) end
    local top = fo.top or 5
    local ranked = {}
    for i, e in ipairs(scored) do ranked[i] = { e = e, i = i } end
    table.sort(ranked, function(a, b)
      if a.e.score ~= b.e.score then return a.e.score < b.e.score end
      return a.i < b.i
    end)
    local ftag = tag .. " final=" .. tostring(type(ff) == "table" and ff.seed or "fn")
    local feval = M.evaluator(ff, o.run)
    final = {}
    local chosen
    for j = 1, math.min(top, #ranked) do
      local e = ranked[j].e
      local r = archive:get(ftag, e.key)
      if not r then
        local res = feval({ plan = e.plan })
        r = archive:add({ tag = ftag, key = e.key, plan = e.plan, score = res.score, nfe = res.nfe, seconds = res.seconds,
          generation = -1, seed = seed, index = archive.count + 1, via = "final" })
        new_evals = new_evals + 1
      else
        reused = reused + 1
      end
      local mean = (e.score + r.score) / 2
      final[j] = { score = e.score, final = r.score, mean = mean, generation = e.generation }
      if not chosen or mean < chosen.mean then chosen = { e = e, mean = mean, final = r.score } end
    end
    best = chosen.e
    best.final = chosen.final
  end
  if own_archive then archive:close() end
  local plan = space_mod.copy(best.plan)
  plan.name = ("S3 search: NFE %d, seed %d, %d plans evaluated, best at generation %d (score %.6g)"):format(o.nfe, seed,
    #scored, best.generation or 0, best.score)
  return plan, best.score, {
    evaluations = #scored, evaluated = new_evals, reused = reused, history = history, tag = tag,
    seconds = core.wtime() - t_start, generation = best.generation, space = sp, final = final,
    final_score = best.final,
  }
end

setmetatable(M, { __call = function(_, o) return M.search(o) end })

return M
