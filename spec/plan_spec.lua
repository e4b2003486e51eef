-- Plans: validation, text round trips, builders, NFE, the sigma = 0 limit, stochastic steps
-- with supplied noise, and a hand-written plan checked against closed forms written out here.
local H = require("helper")
local diffuse = require("diffuse")
local P = require("support.parity")
local plan = diffuse.plan
local ex = require("diffuse.solvers.exponential")

local sched = diffuse.schedule.vp_linear({})
local problem = P.load().problem
local model = P.model(problem)
local x_init = P.cases("dpmsolver/")[1].x_init -- 32 x 2

-- ---- an independent double-precision reference on nested tables ----
local function x0_of(rows, t)
  local a, s = sched:alpha(t), sched:sigma(t)
  local scaled = {}
  for b, r in ipairs(rows) do scaled[b] = { r[1] / a, r[2] / a } end
  return P.posterior_mean(problem, scaled, s / a)
end
local function eps_of(rows, t, x0)
  local a, s = sched:alpha(t), sched:sigma(t)
  local out = {}
  for b, r in ipairs(rows) do out[b] = { (r[1] - a * x0[b][1]) / s, (r[2] - a * x0[b][2]) / s } end
  return out
end
local function comb(terms) -- {{coef, rows}, ...}
  local out = {}
  for b = 1, #terms[1][2] do
    out[b] = { 0, 0 }
    for _, t in ipairs(terms) do
      out[b][1] = out[b][1] + t[1] * t[2][b][1]
      out[b][2] = out[b][2] + t[1] * t[2][b][2]
    end
  end
  return out
end
local function pt(t) return sched:alpha(t), sched:sigma(t), sched:lambda(t) end

local function errmsg(p)
  local ok, err = plan.validate(p)
  assert.is_nil(ok)
  return err
end

describe("plan.validate", function()
  local good = { times = { 1, 0.5, 0.1 }, steps = { { order = 1 }, { order = 2 } } }
  it("accepts a good plan", function()
    assert.is_true(plan.validate(good))
  end)
  it("rejects a non-monotone grid", function()
    local e = errmsg({ times = { 1, 0.5, 0.6 }, steps = { {}, {} } })
    assert.matches("times must decrease strictly: times%[3%]", e)
    assert.matches("times%[3%] = %-1 is not a finite time >= 0", errmsg({ times = { 1, 0.5, -1 }, steps = { {}, {} } }))
  end)
  it("rejects an order above the available history, naming the step", function()
    local e = errmsg({ times = { 1, 0.5, 0.1 }, steps = { { order = 2 }, {} } })
    assert.matches("step 1: order 2 needs 1 earlier points before base 1, only 0 exist", e)
    e = errmsg({ times = { 1, 0.5, 0.2, 0.1 }, steps = { {}, {}, { order = 3, points = { 2 } } } })
    assert.matches("step 3: order 3 needs 2 derivative points, got 1", e)
  end)
  it("rejects unknown fields", function()
    assert.matches("step 2: unknown field 'ordre'", errmsg({ times = { 1, 0.5, 0.1 }, steps = { {}, { ordre = 2 } } }))
    assert.matches("unknown field 'grid'", errmsg({ times = { 1, 0.1 }, steps = { {} }, grid = 1 }))
  end)
  it("rejects bad indices and values", function()
    local T = { 1, 0.5, 0.2, 0.1 }
    assert.matches("step 2: base = 3 must be a point index between 1 and 2",
      errmsg({ times = T, steps = { {}, { base = 3 }, {} } }))
    assert.matches("step 3: points%[1%] = 4 must be an evaluated point between 1 and 3",
      errmsg({ times = T, steps = { {}, {}, { order = 2, points = { 4 } } } }))
    assert.matches("step 3: points%[1%] = 3 is the base point",
      errmsg({ times = T, steps = { {}, {}, { order = 2, points = { 3 } } } }))
    assert.matches("step 3: point 1 is listed twice",
      errmsg({ times = T, steps = { {}, {}, { order = 3, points = { 1, 1 } } } }))
    assert.matches("step 1: pred = eps must be", errmsg({ times = T, steps = { { pred = "eps" }, {}, {} } }))
    assert.matches("step 2: unknown scale 'bh3'", errmsg({ times = T, steps = { {}, { scale = "bh3" }, {} } }))
    assert.matches("step 1: eta = %-1 must be a number >= 0", errmsg({ times = T, steps = { { eta = -1 }, {}, {} } }))
    assert.matches("step 3: the last step cannot have a corrector",
      errmsg({ times = T, steps = { {}, {}, { corrector = true } } }))
    assert.matches("3 times need 2 steps, got 1", errmsg({ times = { 1, 0.5, 0.1 }, steps = { {} } }))
  end)
  it("sample{} refuses an invalid plan with the step in the message", function()
    local e = H.error_of(diffuse.sample, { model = model, schedule = sched, solver = "plan",
      plan = { times = { 1, 0.5, 0.1 }, steps = { {}, { order = 3 } } }, x = diffuse.tensor(x_init) })
    assert.matches("step 2: order 3", e)
    e = H.error_of(diffuse.sample, { model = model, schedule = sched, solver = "plan", x = diffuse.tensor(x_init) })
    assert.matches("needs the option plan", e)
  end)
end)

describe("plan text forms", function()
  local p = plan.dpmsolver({ schedule = sched, steps = 7, algorithm = "dpmsolver++", method = "singlestep", order = 3,
    solver_type = "taylor" })
  p.steps[2].scale = { linear = 0.25 }
  p.steps[3].scale = { 1, 0.5 }
  p.steps[4].eta = 0.5
  it("round-trips through a Lua literal and JSON, in memory and on disk", function()
    assert.are.same(p, plan.parse(plan.tostring(p)))
    assert.are.same(p, plan.parse(plan.tojson(p)))
    assert.are.equal(plan.tostring(p), plan.tostring(plan.parse(plan.tojson(p)))) -- floats stay floats
    local dir = H.tmpdir()
    for _, f in ipairs({ dir .. "/p.lua", dir .. "/p.json" }) do
      assert.is_true(plan.save(p, f))
      assert.are.same(p, plan.load(f))
      assert.is_false(H.exists(f .. ".tmp"))
    end
    assert.matches('"times": %[', H.slurp(dir .. "/p.json"))
    assert.matches("^return {", H.slurp(dir .. "/p.lua"))
    os.execute("rm -rf '" .. dir .. "'")
  end)
  it("never runs code and reports parse errors", function()
    local ok, err = plan.parse("{times = {1, 0.1}, steps = {{}}} os.exit(1)")
    assert.is_nil(ok)
    assert.matches("parse error", err)
    ok, err = plan.parse("{times = (function() return 1 end)()}")
    assert.is_nil(ok)
    local q, e = plan.load("/nonexistent/dir/p.lua")
    assert.is_nil(q)
    assert.is_string(e)
  end)
  it("prints a table of steps", function()
    local s = plan.format(p)
    assert.matches("NFE 7", s)
    assert.matches("DPM%-Solver%-3", s)
  end)
end)

describe("builders", function()
  it("count NFE like the official code", function()
    local function nfe(name, o)
      o.schedule = sched
      return plan.nfe(plan.build(name, o))
    end
    assert.are.equal(10, nfe("dpmsolver++_3m", { steps = 10 }))
    assert.are.equal(7, nfe("dpmsolver++_3s", { steps = 7 }))
    assert.are.equal(8, nfe("dpmsolver_2s", { steps = 8 }))
    assert.are.equal(9, nfe("dpmsolver++", { steps = 10, method = "singlestep_fixed", order = 3 }))
    assert.are.equal(6, nfe("unipc", { steps = 5, denoise_to_zero = true }))
    assert.are.equal(5, nfe("ddim", { steps = 5 }))
  end)
  it("build singlestep order 3 from an outer grid with shared bases", function()
    local p = plan.build("dpmsolver++_3s", { schedule = sched, steps = 6, spacing = "time_uniform" })
    -- 6 NFE: orders 3, 2, 1 (official: steps % 3 == 0)
    assert.are.equal(7, #p.times)
    local s = p.steps
    assert.are.same({ 1, 1, 1, 4, 4, 6 }, { s[1].base or 1, s[2].base, s[3].base, s[4].base or 4, s[5].base, s[6].base or 6 })
    assert.are.same({ 3 }, s[3].points) -- dpmsolver type: the low-order estimate from s2 (point 3) alone
    -- outer points are the 6-step time-uniform grid at 0, 3, 5, 6
    local g = diffuse.grid.times(sched, { spacing = "time_uniform", steps = 6 })
    assert.are.same({ g[1], g[4], g[6], g[7] }, { p.times[1], p.times[4], p.times[6], p.times[7] })
  end)
  it("apply lower_order_final as the official codes do", function()
    local function orders(p)
      local o = {}
      for i, st in ipairs(p.steps) do o[i] = st.order or 1 end
      return table.concat(o)
    end
    assert.are.equal("12333321", orders(plan.build("dpmsolver++_3m", { schedule = sched, steps = 8 })))
    assert.are.equal("1233333333", orders(plan.build("dpmsolver++_3m", { schedule = sched, steps = 10 })))
    assert.are.equal("1233333321", orders(plan.unipc({ schedule = sched, steps = 10, order = 3 })))
    local u = plan.unipc({ schedule = sched, steps = 4, disable_corrector = { 2 } })
    assert.are.same({ true, false, true, false }, { u.steps[1].corrector, u.steps[2].corrector, u.steps[3].corrector,
      u.steps[4].corrector })
  end)
  it("reject unknown options and values, listing the valid ones", function()
    assert.matches("unknown option 'ordr'; valid: .*order", H.error_of(plan.dpmsolver, { schedule = sched, steps = 5, ordr = 2 }))
    assert.matches("method = foo; valid: multistep, singlestep, singlestep_fixed",
      H.error_of(plan.dpmsolver, { schedule = sched, steps = 5, method = "foo" }))
    assert.matches("unknown option 'variant' for solver dpmsolver%+%+",
      H.error_of(diffuse.sample, { model = model, schedule = sched, solver = "dpmsolver++", steps = 5, variant = "bh1",
        x = diffuse.tensor(x_init) }))
    assert.matches("unknown solver 'foo'", H.error_of(plan.build, "foo", {}))
  end)
end)

describe("the unified step", function()
  it("runs a hand-written plan mixing orders and prediction types like the closed forms", function()
    local T = diffuse.grid.times(sched, { spacing = "logSNR", steps = 4 })
    local p = {
      times = T,
      steps = {
        { pred = "data", order = 1 },                                       -- DDIM
        { pred = "noise", order = 2, scale = "dpmsolver" },                 -- DPM-Solver-2M (noise)
        { pred = "data", order = 2, points = { 2 }, scale = "taylor" },     -- DPM-Solver++ 2M, taylor form
        { pred = "data", order = 3, scale = "dpmsolver" },                  -- DPM-Solver++ 3M (official)
      },
    }
    local x, info = diffuse.sample({ model = model, schedule = sched, solver = "plan", plan = p, x = diffuse.tensor(x_init) })
    assert.are.equal(4, info.nfe)
    -- reference
    local xs, D, E, lam = { x_init }, {}, {}, {}
    for i = 1, 5 do lam[i] = sched:lambda(T[i]) end
    D[1] = x0_of(xs[1], T[1])
    local a2, s2 = pt(T[2])
    local a1, s1 = pt(T[1])
    local h = lam[2] - lam[1]
    xs[2] = comb({ { s2 / s1, xs[1] }, { -a2 * ex.expm1(-h), D[1] } })
    D[2] = x0_of(xs[2], T[2])
    E[1] = eps_of(xs[1], T[1], D[1])
    E[2] = eps_of(xs[2], T[2], D[2])
    local a3, s3 = pt(T[3])
    h = lam[3] - lam[2]
    local r0 = (lam[2] - lam[1]) / h
    local phi = ex.expm1(h)
    xs[3] = comb({ { a3 / a2, xs[2] }, { -s3 * phi, E[2] }, { -0.5 * s3 * phi / r0, E[2] }, { 0.5 * s3 * phi / r0, E[1] } })
    D[3] = x0_of(xs[3], T[3])
    local a4, s4 = pt(T[4])
    h = lam[4] - lam[3]
    r0 = (lam[3] - lam[2]) / h
    phi = ex.expm1(-h)
    xs[4] = comb({ { s4 / s3, xs[3] }, { -a4 * phi, D[3] }, { a4 * (phi / h + 1) / r0, D[3] }, { -a4 * (phi / h + 1) / r0, D[2] } })
    D[4] = x0_of(xs[4], T[4])
    local a5, s5 = pt(T[5])
    h = lam[5] - lam[4]
    local h0, h1 = lam[4] - lam[3], lam[3] - lam[2]
    r0 = h0 / h
    local r1 = h1 / h
    local D10 = comb({ { 1 / r0, D[4] }, { -1 / r0, D[3] } })
    local D11 = comb({ { 1 / r1, D[3] }, { -1 / r1, D[2] } })
    local D1 = comb({ { 1 + r0 / (r0 + r1), D10 }, { -r0 / (r0 + r1), D11 } })
    local D2 = comb({ { 1 / (r0 + r1), D10 }, { -1 / (r0 + r1), D11 } })
    phi = ex.expm1(-h)
    local phi2 = phi / h + 1
    local phi3 = phi2 / h - 0.5
    xs[5] = comb({ { s5 / s4, xs[4] }, { -a5 * phi, D[4] }, { a5 * phi2, D1 }, { -a5 * phi3, D2 } })
    assert.allclose(xs[5], x, 2e-5, 0)
  end)

  it("takes the sigma = 0 limit: the last step is x = alpha D(base)", function()
    -- coefficients: data and noise prediction, every order
    local b = sched:point(0.05)
    local t0 = sched:point(0)
    for order = 1, 3 do
      local lams = {}
      for i = 1, order - 1 do lams[i] = sched:lambda(0.05 + 0.05 * i) end
      local c = ex.coefficients("data", b, t0, lams, "taylor", 0)
      assert.are.equal(0, c.x)
      assert.are.equal(1, c.m[1])
      for i = 2, order do assert.are.equal(0, c.m[i]) end
      local cn = ex.coefficients("noise", b, t0, lams, "bh2", 0)
      assert.are.near(1 / b.alpha, cn.x, 1e-15)
      assert.are.near(-b.sigma / b.alpha, cn.m[1], 1e-15)
    end
    -- the first-order limit is continuous: a target close to t = 0 gives nearly the same
    local tiny = sched:point(1e-12)
    for _, pred in ipairs({ "data", "noise" }) do
      for _, eta in ipairs({ 0, 0.5, 1 }) do
        local c, l = ex.coefficients(pred, b, tiny, {}, "taylor", eta), ex.coefficients(pred, b, t0, {}, "taylor", eta)
        assert.are.near(l.x, c.x, 1e-4)
        assert.are.near(l.m[1], c.m[1], 1e-4)
        assert.are.near(l.z, c.z, 1e-4)
      end
    end
    -- whole runs on a karras grid ending at t = 0
    -- (a singlestep run's last step starts from its outer point, not from the last evaluation)
    for _, solver in ipairs({ "dpmsolver++_3m", "dpmsolver_3m", "unipc", "ddim" }) do
      local last_x0
      local x = diffuse.sample({ model = model, schedule = sched, solver = solver, steps = 8, spacing = "karras",
        x = diffuse.tensor(x_init), callback = function(info) if info.i == info.n then last_x0 = info.x0 end end })
      assert.are.equal(0, sched:sigma(0))
      assert.is_true(x:max_abs_diff(last_x0) < 1e-5, solver)
    end
    local x = diffuse.sample({ model = model, schedule = sched, solver = "dpmsolver++_3s", steps = 8, spacing = "karras",
      x = diffuse.tensor(x_init) })
    assert.are.equal(x:sum(), x:sum())
  end)

  it("runs DDIM with eta > 0 on supplied noise like the DDIM formula", function()
    local T = diffuse.grid.times(sched, { spacing = "time_uniform", steps = 6 })
    local noise = {}
    for i = 1, 6 do noise[i] = diffuse.randn({ 32, 2 }, { seed = 7, draw = i }) end
    for _, eta in ipairs({ 0.3, 1.0 }) do
      local x, info = diffuse.sample({ model = model, schedule = sched, solver = "ddim", eta = eta, times = T,
        x = diffuse.tensor(x_init), noise = noise })
      assert.are.equal(6, info.nfe)
      local xs = x_init
      for s = 1, 6 do
        local ab, abp = sched:alpha(T[s]) ^ 2, sched:alpha(T[s + 1]) ^ 2
        local x0 = x0_of(xs, T[s])
        local e = eps_of(xs, T[s], x0)
        local sig = eta * math.sqrt((1 - abp) / (1 - ab)) * math.sqrt(1 - ab / abp)
        xs = comb({ { math.sqrt(abp), x0 }, { math.sqrt(1 - abp - sig * sig), e }, { sig, noise[s]:totable() } })
      end
      assert.allclose(xs, x, 2e-5, 0)
    end
    -- eta = 0 draws nothing: no noise list needed
    local _, info = diffuse.sample({ model = model, schedule = sched, solver = "ddim", times = T, x = diffuse.tensor(x_init) })
    assert.are.equal(0, info.state.draws)
  end)

  it("runs SDE-DPM-Solver++(2M) on supplied noise like its closed form", function()
    local T = diffuse.grid.times(sched, { spacing = "logSNR", steps = 12 })
    local noise = {}
    for i = 1, 12 do noise[i] = diffuse.randn({ 32, 2 }, { seed = 3, draw = i }) end
    local x = diffuse.sample({ model = model, schedule = sched, solver = "sde_dpmsolver++_2m", times = T,
      x = diffuse.tensor(x_init), noise = noise })
    local xs, prev = x_init, nil
    for s = 1, 12 do
      local a, sg, l = pt(T[s])
      local at, st, lt = pt(T[s + 1])
      local h = lt - l
      local D = x0_of(xs, T[s])
      local terms = { { st / sg * math.exp(-h), xs }, { at * -ex.expm1(-2 * h), D },
        { st * math.sqrt(-ex.expm1(-2 * h)), noise[s]:totable() } }
      if prev then
        local r = (l - prev.l) / h
        terms[#terms + 1] = { 0.5 * at * -ex.expm1(-2 * h) / r, D }
        terms[#terms + 1] = { -0.5 * at * -ex.expm1(-2 * h) / r, prev.D }
      end
      prev = { D = D, l = l }
      xs = comb(terms)
    end
    assert.allclose(xs, x, 2e-5, 0)
  end)

  it("keeps states independent under clone and gather", function()
    local o = { model = model, schedule = sched, solver = "unipc", order = 3, steps = 8, x = diffuse.tensor(x_init) }
    local full = diffuse.sample(o)
    local st = diffuse.sampler.new(o)
    for _ = 1, 3 do st:step() end
    local c = st:clone()
    local g = st:gather({ 2, 1 })
    st:run()
    c:run()
    g:run()
    assert.are.equal(0, full:max_abs_diff(st.x))
    assert.are.equal(0, full:max_abs_diff(c.x))
    assert.allclose(full:totable()[1], g.x:totable()[2], 1e-6, 0)
    assert.are.equal(8, st.nfe)
  end)
end)

describe("DEIS and iPNDM as plans", function()
  local diffuse = require("diffuse")
  local gmm = diffuse.models.gmm{ means = { { -1, 0 }, { 1, 0.5 } }, stds = { 0.3, 0.2 } }
  local sched = diffuse.schedule.vp_linear()

  it("plan.deis and plan.ipndm run like the named solvers", function()
    for _, c in ipairs({ { "deis", 1 }, { "deis", 2 }, { "deis", 3 }, { "ipndm", 2 }, { "ipndm", 4 } }) do
      for _, n in ipairs({ 5, 12, 20 }) do
        local a = diffuse.sample{ model = gmm, schedule = sched, solver = c[1], order = c[2], steps = n,
          shape = { 32, 2 }, seed = 3 }
        local p = diffuse.plan[c[1]]{ schedule = sched, steps = n, order = c[2], spacing = "time_quadratic" }
        local b = diffuse.sample{ model = gmm, schedule = sched, solver = "plan", plan = p, shape = { 32, 2 }, seed = 3 }
        assert.is_true(a:max_abs_diff(b) < 1e-5, ("%s order %d, %d steps: %g"):format(c[1], c[2], n, a:max_abs_diff(b)))
      end
    end
  end)

  it("DEIS's lower-order final steps and warm-up are in the plan", function()
    local p = diffuse.plan.deis{ schedule = sched, steps = 6, order = 3 }
    local orders = {}
    for s, st in ipairs(p.steps) do orders[s] = st.order end
    assert.same({ 1, 2, 3, 3, 2, 1 }, orders)
    assert.same({ 3, 2 }, p.steps[4].points)
  end)

  it("validation keeps the multistep scales to their form", function()
    local times = { 1, 0.5, 0.2, 0.1 }
    local function steps_with(last)
      return { times = times, steps = { { pred = "noise" }, { pred = "noise", order = 2, points = { 1 } }, last } }
    end
    local plan = diffuse.plan
    assert.matches("step 3: scale 'deis' needs pred = \"noise\"",
      select(2, plan.validate(steps_with({ pred = "data", order = 2, points = { 2 }, scale = "deis" }))))
    assert.matches("points%[1%] must be 2",
      select(2, plan.validate(steps_with({ pred = "noise", order = 2, points = { 1 }, scale = "deis" }))))
    assert.matches("scale 'ipndm' has no corrector",
      select(2, plan.validate({ times = times, steps = { { pred = "noise" }, { pred = "noise", scale = "ipndm", corrector = true }, { pred = "noise" } } })))
    assert.is_true(plan.validate(steps_with({ pred = "noise", order = 3, points = { 2, 1 }, scale = "deis" })))
  end)
end)

describe("per-step skip and dc, plan-level analytic", function()
  local times = { 1, 0.5, 0.2, 0.1 }
  local function with(step2, extra)
    local p = { times = times, steps = { {}, step2, {} } }
    for k, v in pairs(extra or {}) do p[k] = v end
    return p
  end

  it("validates skip lists: positive integers, no repeats, a list", function()
    assert.is_true(plan.validate(with({ skip = { 2, 5 } })))
    assert.is_true(plan.validate(with({ skip = {} })))
    assert.matches("step 2: skip%[2%] = 0 must be a positive integer", select(2, plan.validate(with({ skip = { 1, 0 } }))))
    assert.matches("step 2: skip%[1%] = 1.5 must be a positive integer", select(2, plan.validate(with({ skip = { 1.5 } }))))
    assert.matches("step 2: skip lists block 3 twice", select(2, plan.validate(with({ skip = { 3, 1, 3 } }))))
    assert.matches("step 2: skip must be a list", select(2, plan.validate(with({ skip = 3 }))))
    assert.matches("skip must be a list %(it has the key 'a'%)", select(2, plan.validate(with({ skip = { a = 1 } }))))
    local p = { times = times, analytic = true, steps = { { skip = { 1 } }, {}, {} } }
    assert.matches("step 1: skip has no effect", select(2, plan.validate(p)))
  end)

  it("validates dc ratios and analytic", function()
    assert.is_true(plan.validate(with({ dc = 0.9 })))
    assert.matches("step 2: dc = x must be a finite number", select(2, plan.validate(with({ dc = "x" }))))
    assert.matches("step 2: dc = inf must be a finite number", select(2, plan.validate(with({ dc = math.huge }))))
    assert.matches("step 1: dc needs the model outputs of two points",
      select(2, plan.validate({ times = times, steps = { { dc = 1 }, {}, {} } })))
    assert.matches("'analytic' must be true or false", select(2, plan.validate(with({}, { analytic = 1 }))))
  end)

  it("round-trips skip, dc and analytic through JSON and Lua text, and counts the analytic NFE", function()
    local p = plan.build("unipc", { schedule = sched, steps = 5, variant = "bh2" })
    p.analytic = true
    p.steps[2].skip = { 4, 1 }
    p.steps[3].skip = {}
    p.steps[3].dc = 0.93
    for _, text in ipairs({ plan.tojson(p), plan.tostring(p) }) do
      local q = assert(plan.parse(text))
      assert.is_true(plan.validate(q))
      assert.same(p, q)
    end
    assert.equal(4, plan.nfe(p))
    assert.matches("skip {4,1}", plan.format(p), 1, true)
    assert.matches("dc 0.93", plan.format(p), 1, true)
    local path = os.tmpname() .. ".json"
    assert.is_true(plan.save(p, path))
    assert.same(p, assert(plan.load(path)))
    os.remove(path)
  end)

  it("passes a step's skip to the model call at that step's point, corrector evaluations included", function()
    local p = plan.build("unipc", { schedule = sched, steps = 4 })
    p.steps[2].skip = { 2 }
    p.steps[4].skip = { 1, 3 }
    local calls = {}
    local function m(x, pnt, _, ctx)
      calls[#calls + 1] = { t = pnt.t, skip = ctx.skip }
      return x:mul(0.5)
    end
    diffuse.sample({ model = m, predicts = "x0", schedule = sched, solver = "plan", plan = p, shape = { 3, 2 }, seed = 1 })
    assert.equal(4, #calls)
    for i, c in ipairs(calls) do
      assert.near(p.times[i], c.t, 1e-12)
      assert.same(p.steps[i].skip, c.skip)
    end
  end)

  it("dc = 1 changes nothing; other ratios are the Lagrange interpolation in t of the outputs", function()
    local p = plan.build("unipc", { schedule = sched, steps = 6, variant = "bh2" })
    local base = diffuse.sample({ model = model, schedule = sched, solver = "plan", plan = p, x = diffuse.tensor(x_init) })
    for s = 2, 6 do p.steps[s].dc = 1 end
    local same = diffuse.sample({ model = model, schedule = sched, solver = "plan", plan = p, x = diffuse.tensor(x_init) })
    assert.is_true(base:allclose(same, 0, 0))
    -- the weights interpolate polynomials of degree 2 in t exactly
    local ts = { 0.9, 0.7, 0.4 }
    local ids, w = ex.dc_weights(ts, 3, 0.8)
    assert.same({ 3, 2, 1 }, ids)
    local tt = 0.7 + 0.8 * (0.4 - 0.7)
    local f = function(t) return 2 - 3 * t + 5 * t * t end
    assert.near(f(tt), w[1] * f(0.4) + w[2] * f(0.7) + w[3] * f(0.9), 1e-12)
    local ids2, w2 = ex.dc_weights(ts, 2, 1.3) -- only two points exist: linear
    assert.same({ 2, 1 }, ids2)
    assert.near(1.3, w2[1], 1e-12)
    assert.near(-0.3, w2[2], 1e-12)
  end)
end)
