-- AutoDiffusion (Li et al., ICCV 2023, arXiv 2309.10438): training-free evolutionary search of
-- the K time steps of a sampler and, jointly, of which residual blocks of the network each step
-- leaves out.
--
--   best, score, info = autodiffusion{fitness = f, steps = 4, solver = "ddim", stage = "time",
--     population = 50, topk = 10, mutation_num = 25, crossover_num = 25, mutation_prob = 0.1,
--     generations = 10, seed = 1, progress = true, archive = path, pool = p, ...}
--   best = {times = {...}, skips = {{...}, ...} | nil}
--
-- The scheme of the paper: a population of candidates; each generation keeps the top-k
-- candidates seen so far (over all generations), makes `mutation_num` children by mutating a
-- random top-k parent (every gene replaced with probability `mutation_prob` by a value the
-- candidate does not hold yet), `crossover_num` children by uniform crossover of two random
-- top-k parents (each position from either parent with probability 1/2), and fills the rest of
-- the population with random candidates.  A candidate already evaluated is never evaluated
-- again (nor proposed twice); an illegal child (repeated steps) is redrawn, up to ten tries
-- per child as the reference code.  The first population holds the uniform grid, random
-- candidates (half the population) and mutations of the uniform grid.
--
-- Time genes: K evaluation times taken from a grid of `grid` (1000) times uniform in
-- (t_end, t_start]; the run visits them in decreasing order and ends at t_end.  With
-- fix_start (default) the first evaluation is at t_start, where the fitness draws its noise,
-- and the other K - 1 are searched.
-- Block genes (stage "joint"): for every step the set of residual blocks it skips, with
-- exactly `block_budget` (step, block) pairs skipped in total.  Mutation moves a skipped pair
-- to a pair that is not skipped; crossover takes each step's set from either parent and then
-- adds or removes random pairs to restore the budget (the reference code rejects children
-- over its compute budget; repairing keeps every child).
local util = require("diffuse.util")

local M = {}
local F = "search.autodiffusion"

--------------------------------------------------------------------------------------------
-- A seeded generator of its own (splitmix64), so that a search neither reads nor disturbs
-- math.random's global state.

local function new_rng(seed)
  local s = math.tointeger(seed) or 1
  s = s * 0x2545F4914F6CDD1D + 0x1234567
  local function next64()
    s = s + 0x9E3779B97F4A7C15
    local z = s
    z = (z ~ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ~ (z >> 27)) * 0x94D049BB133111EB
    return z ~ (z >> 31)
  end
  local r = {}
  function r.uniform() return (next64() >> 11) * (1.0 / 9007199254740992.0) end
  function r.int(n) return math.floor(r.uniform() * n) + 1 end -- 1 .. n
  function r.choice(list) return list[r.int(#list)] end
  return r
end
M.new_rng = new_rng

--------------------------------------------------------------------------------------------
-- Candidates: {idx = {grid indices, decreasing}, skips = {[step] = {blocks, increasing}} | nil}

local function sort_desc(t) table.sort(t, function(a, b) return a > b end); return t end

local function key_of(c)
  local k = table.concat(c.idx, ",")
  if c.skips then
    local parts = {}
    for s = 1, #c.skips do parts[s] = table.concat(c.skips[s], ".") end
    k = k .. "|" .. table.concat(parts, "/")
  end
  return k
end
M.key_of = key_of

local function distinct(list)
  local seen = {}
  for _, v in ipairs(list) do
    if seen[v] then return false end
    seen[v] = true
  end
  return true
end

local function copy_skips(sk)
  if not sk then return nil end
  local out = {}
  for s, set in ipairs(sk) do
    out[s] = {}
    for i, b in ipairs(set) do out[s][i] = b end
  end
  return out
end

local function skip_total(sk)
  local n = 0
  for _, set in ipairs(sk) do n = n + #set end
  return n
end

-- The search space, fixed for one run.
local Space = {}
Space.__index = Space

function Space:times_of(c)
  local ts = {}
  for i, j in ipairs(c.idx) do ts[i] = self.grid[j] end
  ts[#ts + 1] = self.t_end
  return ts
end

-- free genes: positions of idx that the search changes
function Space:free_lo() return self.fix_start and 2 or 1 end

function Space:normalize(c)
  local head = self.fix_start and table.remove(c.idx, 1) or nil
  sort_desc(c.idx)
  if head then table.insert(c.idx, 1, head) end
  if c.skips then
    for _, set in ipairs(c.skips) do table.sort(set) end
  end
  return c
end

function Space:legal(c)
  if #c.idx ~= self.K or not distinct(c.idx) then return false end
  for i, j in ipairs(c.idx) do
    if j < 1 or j > self.N or (i > 1 and not (j < c.idx[i - 1])) then return false end
  end
  if self.fix_start and c.idx[1] ~= self.N then return false end
  if self.joint then
    if #c.skips ~= self.K or skip_total(c.skips) ~= self.budget then return false end
    for _, set in ipairs(c.skips) do
      if not distinct(set) then return false end
      for _, b in ipairs(set) do if b < 1 or b > self.blocks then return false end end
    end
  end
  return true
end

-- (step, block) pairs numbered 1 .. K * blocks
function Space:pair(s, b) return (s - 1) * self.blocks + b end

function Space:skips_from_pairs(pairs_)
  local sk = {}
  for s = 1, self.K do sk[s] = {} end
  for _, p in ipairs(pairs_) do
    local s, b = (p - 1) // self.blocks + 1, (p - 1) % self.blocks + 1
    sk[s][#sk[s] + 1] = b
  end
  for _, set in ipairs(sk) do table.sort(set) end
  return sk
end

function Space:pairs_of(sk)
  local out = {}
  for s, set in ipairs(sk) do
    for _, b in ipairs(set) do out[#out + 1] = self:pair(s, b) end
  end
  return out
end

-- n distinct values drawn from 1 .. m, excluding the set `taken`
local function draw_distinct(rng, m, n, taken)
  local out, used = {}, {}
  for k, v in pairs(taken or {}) do used[k] = v end
  while #out < n do
    local v = rng.int(m)
    if not used[v] then used[v] = true; out[#out + 1] = v end
  end
  return out
end

function Space:random_skips(rng)
  return self:skips_from_pairs(draw_distinct(rng, self.K * self.blocks, self.budget))
end

function Space:random(rng)
  local idx = draw_distinct(rng, self.fix_start and self.N - 1 or self.N, self.K - (self.fix_start and 1 or 0))
  if self.fix_start then table.insert(idx, 1, self.N) end
  local c = { idx = idx, skips = self.joint and self:random_skips(rng) or nil }
  return self:normalize(c)
end

function Space:mutate(parent, rng, p)
  local c = { idx = {}, skips = copy_skips(parent.skips) }
  local used = {}
  for i, j in ipairs(parent.idx) do c.idx[i] = j; used[j] = true end
  local top = self.fix_start and self.N - 1 or self.N
  local free = top - (self.K - self:free_lo() + 1)
  for i = self:free_lo(), self.K do
    if free > 0 and rng.uniform() < p then
      local v
      repeat v = rng.int(top) until not used[v]
      used[c.idx[i]] = nil
      used[v] = true
      c.idx[i] = v
    end
  end
  if self.joint and self.budget > 0 and self.budget < self.K * self.blocks then
    local pairs_ = self:pairs_of(c.skips)
    local on = {}
    for _, q in ipairs(pairs_) do on[q] = true end
    for i, q in ipairs(pairs_) do
      if rng.uniform() < p then
        local v
        repeat v = rng.int(self.K * self.blocks) until not on[v]
        on[q], on[v] = nil, true
        pairs_[i] = v
      end
    end
    c.skips = self:skips_from_pairs(pairs_)
  end
  return self:normalize(c)
end

function Space:crossover(a, b, rng)
  local c = { idx = {} }
  for i = 1, self.K do c.idx[i] = (rng.uniform() < 0.5) and a.idx[i] or b.idx[i] end
  if self.joint then
    local sk = {}
    for s = 1, self.K do sk[s] = (rng.uniform() < 0.5) and a.skips[s] or b.skips[s] end
    local pairs_ = self:pairs_of(copy_skips(sk))
    local on = {}
    for _, q in ipairs(pairs_) do on[q] = true end
    -- restore the budget: drop random pairs or add random new ones
    while #pairs_ > self.budget do
      local i = rng.int(#pairs_)
      on[pairs_[i]] = nil
      table.remove(pairs_, i)
    end
    while #pairs_ < self.budget do
      local v = rng.int(self.K * self.blocks)
      if not on[v] then on[v] = true; pairs_[#pairs_ + 1] = v end
    end
    c.skips = self:skips_from_pairs(pairs_)
  end
  return self:normalize(c)
end

-- the uniform grid of K evaluation times, snapped to the search grid
function Space:uniform()
  local idx = {}
  for i = 1, self.K do
    local t = self.t_start - (self.t_start - self.t_end) * (i - 1) / self.K
    local j = math.floor((t - self.t_end) / (self.t_start - self.t_end) * self.N + 0.5)
    idx[i] = math.max(1, math.min(self.N, j))
  end
  local c = { idx = idx, skips = nil }
  if self.joint then
    -- the budget spread over steps and blocks, last blocks first
    local pairs_ = {}
    for q = 0, self.budget - 1 do
      local s = q % self.K + 1
      local b = self.blocks - (q // self.K) % self.blocks
      pairs_[#pairs_ + 1] = self:pair(s, b)
    end
    c.skips = self:skips_from_pairs(pairs_)
  end
  return c
end

-- the candidate nearest to given times (and skips)
function Space:from(times, skips)
  local idx = {}
  for i = 1, self.K do
    local j = math.floor((times[i] - self.t_end) / (self.t_start - self.t_end) * self.N + 0.5)
    idx[i] = math.max(1, math.min(self.N, j))
  end
  if self.fix_start then idx[1] = self.N end
  local c = { idx = idx }
  if self.joint then c.skips = skips and copy_skips(skips) or self:uniform().skips end
  return self:normalize(c)
end

--------------------------------------------------------------------------------------------
-- Runs

-- A model that leaves out, at each evaluation time, the blocks listed for that time.  The
-- time is matched to the run's grid (the sampler evaluates at exactly those times), so any
-- solver works.
function M.skip_model(base, times, skips)
  if type(times) ~= "table" or type(skips) ~= "table" then util.fail(F .. ".skip_model", "expected (model, times, skips)", 2) end
  local function lookup(t)
    for i = 1, #skips do
      local ti = times[i]
      if ti == t or math.abs(ti - t) <= 1e-12 * math.max(1, math.abs(t)) then return skips[i] end
    end
    return nil
  end
  return setmetatable({ predicts = base.predicts, schedule = base.schedule, base = base }, {
    __call = function(_, x, p, cond, ctx)
      local sk = lookup(p.t)
      if sk and #sk > 0 then return base(x, p, cond, { state = ctx and ctx.state, skip = sk }) end
      return base(x, p, cond, ctx)
    end,
  })
end

-- The sample{} options of a candidate result {times, skips}: solver, times and (with skips)
-- the skipping model.
function M.run_of(best, o)
  o = o or {}
  local solver = o.solver or "ddim"
  local run
  if type(solver) == "function" then
    run = solver(best.times)
  else
    run = { solver = solver }
    for k, v in pairs(o.solver_options or {}) do run[k] = v end
    run.times = best.times
  end
  if best.skips and skip_total(best.skips) > 0 then
    if not o.model then util.fail(F, "a candidate with skipped blocks needs the network model (option 'model')", 2) end
    run.model = M.skip_model(o.model, best.times, best.skips)
  end
  return run
end

local function read_archive(path)
  local json = require("diffuse.json")
  local out = {}
  local f = io.open(path, "r")
  if not f then return out end
  for line in f:lines() do
    -- a line cut short by an interrupted run is ignored
    local ok, v = pcall(json.decode, line)
    if ok and type(v) == "table" and v.key then
      out[v.key] = v.score == "inf" and math.huge or v.score
    end
  end
  f:close()
  return out
end

local valid = { fitness = true, steps = true, solver = true, solver_options = true, stage = true,
  block_budget = true, blocks = true, model = true, population = true, topk = true, mutation_num = true,
  crossover_num = true, mutation_prob = true, generations = true, seed = true, progress = true, archive = true,
  pool = true, grid = true, t_start = true, t_end = true, fix_start = true, init = true, schedule = true }

function M.run(o)
  o = util.check_options(F, o, valid, 2)
  local f = o.fitness
  if f == nil or (type(f) ~= "table" and type(f) ~= "function") then
    util.fail(F, "'fitness' is required: a fitness from diffuse.search.fitness", 2)
  end
  local K = o.steps or 4
  if math.type(K) ~= "integer" or K < 1 then util.fail(F, ("steps must be a positive integer, got %s"):format(tostring(K)), 2) end
  local stage = o.stage or "time"
  if stage ~= "time" and stage ~= "joint" then util.fail(F, ("stage = %s; valid: time, joint"):format(tostring(stage)), 2) end
  local fopts = type(f) == "table" and f.opts or {}
  local model = o.model or fopts.model
  local sched = o.schedule or fopts.schedule or (model and model.schedule)
  if not sched then util.fail(F, "cannot find the schedule: pass 'schedule' (or a fitness that knows its model)", 2) end
  local N = o.grid or 1000
  if math.type(N) ~= "integer" or N < K then util.fail(F, ("grid must be an integer >= steps, got %s"):format(tostring(N)), 2) end
  local space = setmetatable({
    K = K, N = N, t_start = o.t_start or fopts.t_start or sched.t_start, t_end = o.t_end or fopts.t_end or sched.t_end,
    fix_start = o.fix_start ~= false, joint = stage == "joint", budget = o.block_budget or 0, blocks = o.blocks,
  }, Space)
  if space.fix_start and K == 1 and N < 1 then util.fail(F, "empty search space", 2) end
  space.grid = {}
  for j = 1, N do space.grid[j] = space.t_end + (space.t_start - space.t_end) * j / N end
  space.grid[N] = space.t_start
  if space.joint then
    if not model then util.fail(F, "stage 'joint' needs the network model ('model', or a fitness that has one)", 2) end
    if not space.blocks then
      local net = model.net
      space.blocks = net and net.blocks and #net.blocks
      if not space.blocks then util.fail(F, "cannot tell the number of residual blocks: pass 'blocks'", 2) end
    end
    local b = space.budget
    if math.type(b) ~= "integer" or b < 0 or b > K * space.blocks then
      util.fail(F, ("block_budget must be an integer from 0 to steps * blocks = %d, got %s"):format(K * space.blocks,
        tostring(b)), 2)
    end
  end
  local P = o.population or 50
  local topk = o.topk or math.max(1, P // 5)
  local n_mut = o.mutation_num or P // 2
  local n_cross = o.crossover_num or P // 2
  local pm = o.mutation_prob or 0.1
  local G = o.generations or 10
  local rng = new_rng(o.seed or 1)
  local run_opts = { solver = o.solver, solver_options = o.solver_options, model = model }

  local cache = o.archive and read_archive(o.archive) or {}
  local archive_f
  if o.archive then
    archive_f = assert(io.open(o.archive, "a"))
  end
  local json = require("diffuse.json")
  local seen = {}      -- proposed (evaluated or in the current batch)
  local scores = {}    -- key -> score
  local cands = {}     -- key -> candidate
  local evaluations, cached, t0 = 0, 0, require("diffuse.core").wtime()
  local history = {}
  local best_key
  local bar
  if o.progress then
    bar = require("diffuse.progress").new{ total = G * P, label = type(o.progress) == "string" and o.progress or "autodiffusion",
      unit = "cand" }
  end

  local function result_of(c)
    return { times = space:times_of(c), skips = c.skips and copy_skips(c.skips) or nil }
  end

  local done = 0
  local function evaluate(batch)
    local todo, runs = {}, {}
    for _, c in ipairs(batch) do
      local k = key_of(c)
      cands[k] = c
      if cache[k] ~= nil then
        scores[k] = cache[k]
        cached = cached + 1
      else
        todo[#todo + 1] = c
        runs[#runs + 1] = M.run_of(result_of(c), run_opts)
      end
    end
    local function record(c, s, nfe)
      local k = key_of(c)
      if s ~= s then s = math.huge end
      scores[k] = s
      evaluations = evaluations + 1
      if archive_f then
        local r = result_of(c)
        archive_f:write(json.encode({ key = k, times = r.times, skips = r.skips, score = s == math.huge and "inf" or s,
          nfe = nfe }), "\n")
        archive_f:flush()
      end
    end
    if o.pool and #runs > 0 then
      -- The pool ships plain data only: items are indices into runs (a run may hold a wrapped
      -- model); forked workers see runs as it was when map forked them.
      local idx = {}
      for i = 1, #runs do idx[i] = i end
      local res = o.pool:map(function(i)
        local s, info = f(runs[i])
        return { score = s == math.huge and "inf" or s, nfe = info and info.nfe }
      end, idx)
      for _, r in ipairs(res) do if r.score == "inf" then r.score = math.huge end end
      for i, c in ipairs(todo) do
        if res[i].nfe and res[i].nfe ~= K then
          error(("%s: a candidate run took %d NFE, not %d"):format(F, res[i].nfe, K), 0)
        end
        record(c, res[i].score, res[i].nfe)
      end
      done = done + #todo
    else
      for i, c in ipairs(todo) do
        local s, info = f(runs[i])
        if info and info.nfe and info.nfe ~= K then
          error(("%s: a candidate run took %d NFE, not %d (does the solver take one evaluation per step?)"):format(F,
            info.nfe, K), 0)
        end
        record(c, s, info and info.nfe)
        done = done + 1
        local k = key_of(c)
        if not best_key or scores[k] < scores[best_key] then best_key = k end
        if bar then bar:update(math.min(done, G * P), { best = scores[best_key] }) end
      end
    end
    for _, c in ipairs(batch) do
      local k = key_of(c)
      if not best_key or scores[k] < scores[best_key] then best_key = k end
    end
    if bar and o.pool then bar:update(math.min(done, G * P), { best = scores[best_key] }) end
  end

  -- propose(fn, n): up to n new legal candidates from fn(), ten tries per candidate
  local function propose(fn, n, into)
    local tries = n * 10
    local got = 0
    while got < n and tries > 0 do
      tries = tries - 1
      local c = fn()
      if space:legal(c) then
        local k = key_of(c)
        if not seen[k] then
          seen[k] = true
          into[#into + 1] = c
          got = got + 1
        end
      end
    end
  end

  -- first population: the initial grid (uniform, or o.init), random candidates, mutations of
  -- the initial grid
  local init
  if o.init then
    init = space:from(o.init.times or o.init, o.init.skips)
  else
    init = space:normalize(space:uniform())
  end
  if not space:legal(init) then init = space:random(rng) end
  local pop = {}
  seen[key_of(init)] = true
  pop[1] = init
  propose(function() return space:random(rng) end, P // 2, pop)
  propose(function() return space:mutate(init, rng, pm) end, P - #pop, pop)
  propose(function() return space:random(rng) end, P - #pop, pop)
  evaluate(pop)
  local init_score = scores[key_of(init)]

  local top = {}
  local function update_top(batch)
    local all = {}
    for _, c in ipairs(top) do all[#all + 1] = c end
    for _, c in ipairs(batch) do all[#all + 1] = c end
    table.sort(all, function(a, b)
      local sa, sb = scores[key_of(a)], scores[key_of(b)]
      if sa ~= sb then return sa < sb end
      return key_of(a) < key_of(b)
    end)
    top = {}
    for i = 1, math.min(topk, #all) do top[i] = all[i] end
  end
  update_top(pop)
  history[1] = scores[key_of(top[1])]

  for g = 2, G do
    local batch = {}
    propose(function() return space:mutate(rng.choice(top), rng, pm) end, n_mut, batch)
    propose(function() return space:crossover(rng.choice(top), rng.choice(top), rng) end, n_cross, batch)
    propose(function() return space:random(rng) end, P - #batch, batch)
    evaluate(batch)
    update_top(batch)
    history[g] = scores[key_of(top[1])]
  end
  if bar then bar:finish({ best = scores[key_of(top[1])] }) end
  if archive_f then archive_f:close() end

  local b = top[1]
  local best = result_of(b)
  local info = {
    evaluations = evaluations, cached = cached, generations = G, history = history, seconds = require("diffuse.core").wtime() - t0,
    initial = { times = space:times_of(init), skips = init.skips, score = init_score },
    run = M.run_of(best, run_opts), top = {}, grid = space.grid,
  }
  for i, c in ipairs(top) do info.top[i] = { times = space:times_of(c), skips = c.skips, score = scores[key_of(c)] } end
  return best, scores[key_of(b)], info
end

-- Exposed for the specs: the search space of given options, without running anything.
function M.space(o)
  local s = setmetatable({ K = o.steps, N = o.grid or 1000, t_start = o.t_start, t_end = o.t_end, fix_start = o.fix_start ~= false,
    joint = o.stage == "joint", budget = o.block_budget or 0, blocks = o.blocks }, Space)
  s.grid = {}
  for j = 1, s.N do s.grid[j] = s.t_end + (s.t_start - s.t_end) * j / s.N end
  return s
end

return setmetatable(M, { __call = function(_, o) return M.run(o) end })
