-- The search space: random plans, thousands of mutations and crossovers that must all validate
-- with the exact NFE budget and fixed ends, grid edits that keep step references right, the
-- feature encoding, presets, the seeded generator.
local diffuse = require("diffuse")
local space = require("diffuse.search.space")
local plan = diffuse.plan

local sched = diffuse.schedule.vp_cosine()

local function valid_in(sp, p)
  local ok, err = plan.validate(p)
  assert(ok, err)
  assert(space.nfe(p) == sp.nfe, ("NFE %d, budget %d"):format(space.nfe(p), sp.nfe))
  assert(p.times[1] == sp.t_start, "first time moved")
  if not sp.free_end then assert(p.times[#p.times] == sp.t_end, "last time moved") end
  -- no corrector on the last step, orders within the space
  assert(not p.steps[#p.steps].corrector)
  for _, st in ipairs(p.steps) do assert((st.order or 1) <= sp.max_order) end
  -- interior lambda gaps respect min_gap (up to the spreading of crowded grids)
  for i = 2, #p.times do assert(p.times[i] < p.times[i - 1]) end
end

describe("search.space", function()
  it("the generator is seeded, uniform in [0, 1), and has an exact state", function()
    local a, b = space.rng(7), space.rng(7)
    local sum = 0
    for _ = 1, 10000 do
      local u = a:uniform()
      assert.are.equal(u, b:uniform())
      assert.is_true(u >= 0 and u < 1)
      sum = sum + u
    end
    assert.is_near(0.5, sum / 10000, 0.02)
    local s = a:state()
    local x = a:uniform()
    a:set_state(s)
    assert.are.equal(x, a:uniform())
    assert.are_not.equal(space.rng(1):uniform(), space.rng(2):uniform())
    local counts = {}
    for _ = 1, 6000 do local k = a:int(1, 3); counts[k] = (counts[k] or 0) + 1 end
    for k = 1, 3 do assert.is_near(2000, counts[k], 200) end
  end)

  it("random plans validate with exactly the NFE budget", function()
    for _, nfe in ipairs({ 1, 2, 3, 4, 5, 6, 8, 10 }) do
      local sp = space.new({ schedule = sched, nfe = nfe })
      local rng = space.rng(nfe)
      for _ = 1, 100 do valid_in(sp, sp:random(rng)) end
    end
  end)

  it("thousands of mutations and crossovers all validate with the budget", function()
    local kinds = {}
    for _, nfe in ipairs({ 2, 4, 5, 7, 10 }) do
      local sp = space.new({ schedule = sched, nfe = nfe, eta = { 0, 0.5, 1 } })
      local rng = space.rng(100 + nfe)
      local pop = sp:presets()
      for _ = 1, 8 do pop[#pop + 1] = sp:random(rng) end
      for _, p in ipairs(pop) do valid_in(sp, p) end
      for _ = 1, 1500 do
        local a = pop[rng:int(1, #pop)]
        local c
        if rng:bernoulli(0.3) then
          c = sp:crossover(a, pop[rng:int(1, #pop)], rng)
          kinds.crossover = true
        else
          local k
          c, k = sp:mutate(a, rng)
          kinds[k] = true
          assert.are_not.equal(sp:key(a), sp:key(c)) -- a mutation changes the plan
        end
        valid_in(sp, c)
        if #pop < 150 then pop[#pop + 1] = c else pop[rng:int(1, #pop)] = c end
      end
    end
    for _, k in ipairs({ "move", "insert_delete", "order", "pred", "points", "scale", "corrector", "step", "eta", "crossover" }) do
      assert.is_true(kinds[k] ~= nil, k)
    end
  end)

  it("a free end moves within its range and keeps the budget", function()
    local sp = space.new({ schedule = sched, nfe = 4, free_end = { 1e-3, 0.05 } })
    local rng = space.rng(3)
    local p = sp:random(rng)
    local ends = {}
    for _ = 1, 300 do
      p = sp:mutate(p, rng)
      valid_in(sp, p)
      local t = p.times[#p.times]
      assert.is_true(t >= 1e-3 and t <= 0.05)
      ends[t] = true
    end
    local n = 0
    for _ in pairs(ends) do n = n + 1 end
    assert.is_true(n > 5)
  end)

  it("deleting and inserting a point keep the step references on the same time points", function()
    local sp = space.new({ schedule = sched, nfe = 6 })
    local rng = space.rng(11)
    -- a plan whose last step takes its derivative from a point far back, then insert/delete
    -- edits: the times a step's points refer to must survive unless that point was deleted
    for _ = 1, 200 do
      local p = sp:random(rng)
      p.steps[6] = { pred = "data", order = 2, points = { 3 } }
      local t3 = p.times[3]
      local q = sp:mutate(p, rng, "insert_delete")
      valid_in(sp, q)
      local st = q.steps[#q.steps]
      local pts = st.points or { #q.steps - 1 }
      local still = false
      for i = 1, #q.times do if q.times[i] == t3 then still = true end end
      if still and st.order == 2 and (p.times[6] == q.times[6]) then
        assert.are.equal(t3, q.times[pts[1]])
      end
    end
  end)

  it("grown plans: one more point in each gap, valid in the larger space, same derivative points", function()
    local sp4 = space.new({ schedule = sched, nfe = 4 })
    local sp5 = space.new({ schedule = sched, nfe = 5 })
    local rng = space.rng(21)
    for _ = 1, 50 do
      local p = sp4:random(rng)
      local g = sp5:grown(p, { 0.5 })
      assert.is_true(#g >= 1)
      for _, q in ipairs(g) do
        valid_in(sp5, q)
        -- the last step takes its derivatives from the same time points as before (unless a
        -- grid point was pushed by the minimum gap)
        local s
        for j = 1, #q.times do if q.times[j] == p.times[4] then s = j end end
        if s then -- not moved by the minimum gap
          local a, b = diffuse.plan.normalize_step(p.steps[4], 4), diffuse.plan.normalize_step(q.steps[s], s)
          assert.are.equal(a.order, b.order)
          for i, j in ipairs(a.points) do
            local tj = p.times[j]
            local found = false
            for _, k in ipairs(b.points) do if q.times[k] == tj then found = true end end
            -- a point pushed by the minimum gap has a new time: then only the count is kept
            if not found then
              local moved = true
              for k = 1, #q.times do if q.times[k] == tj then moved = false end end
              assert.is_true(moved)
            end
          end
        end
      end
    end
  end)

  it("changes of order respect the points available", function()
    local sp = space.new({ schedule = sched, nfe = 5 })
    local rng = space.rng(5)
    local p = sp:presets()[1]
    for _ = 1, 500 do
      p = sp:mutate(p, rng, "order")
      for s, st in ipairs(p.steps) do assert.is_true(st.order <= s) end
    end
  end)

  it("canonical keys: equal decisions give equal keys, defaults dropped", function()
    local sp = space.new({ schedule = sched, nfe = 3 })
    local g = diffuse.grid.times(sched, { spacing = "logSNR", steps = 3 })
    local a = { times = g, steps = { { order = 1 }, { order = 2, scale = "taylor" }, { order = 2, points = { 2 } } } }
    local b = { times = g, steps = { { pred = "data" }, { order = 2 }, { pred = "data", order = 2 } } }
    sp:repair(a)
    sp:repair(b)
    assert.are.equal(sp:key(sp:canonical(a)), sp:key(sp:canonical(b)))
  end)

  it("encodes a plan as per-step feature vectors of fixed length", function()
    local sp = space.new({ schedule = sched, nfe = 4 })
    local p = plan.build("unipc", { schedule = sched, steps = 4, variant = "bh2" })
    local enc = sp:encode(p)
    assert.are.equal(4, #enc)
    for _, v in ipairs(enc) do assert.are.equal(sp.step_dim, #v) end
    -- step 2 of UniPC order 2: order 2 one-hot, bh2 one-hot, corrector
    assert.are.equal(1, enc[2][6])
    assert.are.equal(1, enc[2][16])
    assert.are.equal(1, enc[2][19])
    assert.are.equal(0, enc[4][19])
    -- the lambdas of the steps' ends in [0, 1]: first 0, last 1
    assert.is_near(0, enc[1][1], 1e-12)
    assert.is_near(1, enc[4][2], 1e-12)
    assert.are.equal(sp:feature_dim(), #sp:features(p))
  end)

  it("presets are the named solvers at the space's NFE", function()
    local sp = space.new({ schedule = sched, nfe = 5 })
    local ps = sp:presets()
    assert.is_true(#ps >= 20)
    for _, p in ipairs(ps) do valid_in(sp, p) end
    assert.truthy(ps[1].name:match("DDIM"))
  end)

  it("rejects bad options with the valid ones listed", function()
    assert.has_error(function() space.new({ schedule = sched, nfe = 5, colour = 1 }) end)
    assert.has_error(function() space.new({ nfe = 5 }) end, "search.space.new: 'schedule' is required (a diffuse.schedule)")
    assert.has_error(function() space.new({ schedule = sched, nfe = 0 }) end, "search.space.new: 'nfe' must be an integer >= 1")
    local ok, err = pcall(space.new, { schedule = sched, nfe = 5, colour = 1 })
    assert.is_false(ok)
    assert.truthy(err:match("unknown option 'colour'"))
  end)

  it("with an analytic first step: NFE = #times - 2 and every mutation keeps it", function()
    local sp = space.new({ schedule = sched, nfe = 5, analytic = true })
    local rng = space.rng(9)
    local p = sp:random(rng)
    local seen_on, seen_off = false, false
    for _ = 1, 2000 do
      p = rng:bernoulli(0.2) and sp:crossover(p, sp:random(rng), rng) or sp:mutate(p, rng)
      valid_in(sp, p)
      assert.are.equal(#p.times - 1 - (p.analytic and 1 or 0), 5)
      if p.analytic then seen_on = true else seen_off = true end
    end
    assert.is_true(seen_on and seen_off)
  end)
end)
