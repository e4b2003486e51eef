-- OLSS: least squares over the starting noise and all model outputs so far, fitted to a fine
-- reference trajectory; the "olss" solver runs the coefficients.
local diffuse = require("diffuse")
local olss = require("diffuse.search.olss")
local fitness = require("diffuse.search.fitness")

local sched = diffuse.schedule.vp_linear()
local gmm = diffuse.models.gmm { means = { { 2, 0 }, { -2, 1 }, { 0, -2 } }, stds = { 0.3, 0.5, 0.2 } }

describe("search.olss", function()
  it("solves least squares over tensors exactly when the target is in their span", function()
    local a, b, c = diffuse.randn({ 50, 3 }, { seed = 1 }), diffuse.randn({ 50, 3 }, { seed = 2 }), diffuse.randn({ 50, 3 }, { seed = 3 })
    local y = diffuse.lincomb({ a, b, c }, { 2, -3, 0.5 })
    local coef = olss._lstsq({ a, b, c }, y, 0)
    assert.near(2, coef[1], 1e-5)
    assert.near(-3, coef[2], 1e-5)
    assert.near(0.5, coef[3], 1e-5)
  end)

  it("runs DDIM exactly when given DDIM's coefficients written in the noise-and-outputs basis", function()
    local times = diffuse.grid.times(sched, { spacing = "logSNR", steps = 5 })
    -- DDIM (data prediction): x_{i+1} = r_i x_i + c_i x0_i, expanded: x_i = a_i x_T + sum_j b_ij x0_j
    local a, b, steps = 1, {}, {}
    for i = 1, 5 do
      local s0, s1 = sched:sigma(times[i]), sched:sigma(times[i + 1])
      local al0, al1 = sched:alpha(times[i]), sched:alpha(times[i + 1])
      local r, c = s1 / s0, al1 - s1 * al0 / s0
      a = a * r
      local nb = {}
      for j = 1, i - 1 do nb[j] = r * b[j] end
      nb[i] = c
      b = nb
      steps[i] = { x = a, m = { table.unpack(b) } }
    end
    local coef = { kind = "olss", times = times, pred = "data", steps = steps }
    local x1, i1 = diffuse.sample({ model = gmm, schedule = sched, solver = "olss", coefficients = coef, shape = { 20, 2 }, seed = 4 })
    local x2 = diffuse.sample({ model = gmm, schedule = sched, solver = "ddim", times = times, shape = { 20, 2 }, seed = 4 })
    assert.equal(5, i1.nfe)
    assert.is_true(x1:allclose(x2, 1e-5, 1e-5))
  end)

  it("fits coefficients that beat DDIM and DPM-Solver++(2M) at low NFE on held-out noise", function()
    local f = fitness.ode_error({ model = gmm, schedule = sched, shape = { 400, 2 }, seed = 2 })
    for _, nfe in ipairs({ 4, 6 }) do
      local c = olss.fit({ model = gmm, schedule = sched, nfe = nfe, trajectories = 100, dim = 2, seed = 1 })
      local e_olss, info = f({ solver = "olss", coefficients = c })
      assert.equal(nfe, info.nfe)
      local e_ddim = f({ solver = "ddim", steps = nfe })
      local e_dpm = f({ solver = "dpmsolver++_2m", steps = nfe })
      assert.is_true(e_olss < 0.85 * math.min(e_ddim, e_dpm),
        ("NFE %d: OLSS %.4g, DDIM %.4g, DPM-Solver++(2M) %.4g"):format(nfe, e_olss, e_ddim, e_dpm))
    end
  end)

  it("saves and loads coefficients as JSON with identical samples; checks what it runs", function()
    local c = olss.fit({ model = gmm, schedule = sched, nfe = 4, trajectories = 20, dim = 2, pred = "noise" })
    local path = os.tmpname() .. ".json"
    assert.is_true(olss.save(c, path))
    local d = assert(olss.load(path))
    os.remove(path)
    local x1 = diffuse.sample({ model = gmm, schedule = sched, solver = "olss", coefficients = c, shape = { 5, 2 }, seed = 9 })
    local x2 = diffuse.sample({ model = gmm, schedule = sched, solver = "olss", coefficients = d, shape = { 5, 2 }, seed = 9 })
    assert.is_true(x1:allclose(x2, 0, 0))
    local bad = { kind = "olss", times = { 1, 0.5, 0.1 }, pred = "data", steps = { { x = 1, m = { 0 } }, { x = 1, m = { 0 } } } }
    local ok, err = pcall(diffuse.sample, { model = gmm, schedule = sched, solver = "olss", coefficients = bad, shape = { 2, 2 } })
    assert.is_false(ok)
    assert.matches("steps%[2%] must be {x = number, m = {2 numbers}}", err)
    assert.matches("solver 'olss' needs the option coefficients",
      select(2, pcall(diffuse.sample, { model = gmm, schedule = sched, solver = "olss", shape = { 2, 2 } })))
    assert.matches("unknown option 'nfes'", select(2, pcall(olss.fit, { model = gmm, nfes = 3 })))
  end)
end)
