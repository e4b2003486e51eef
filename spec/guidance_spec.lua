-- The guidance contract: a guidance object is a model (every solver runs it), keeps per-row
-- memory in the sampler state, counts evaluations per row honestly, and rejects bad input with
-- clear errors.
local H = require("helper")
local diffuse = H.diffuse
local guidance = diffuse.guidance

local gmm = diffuse.models.gmm{ means = { { -2, 0 }, { 2, 0 }, { 0, 2 } }, stds = 0.5, labels = { 0, 1, 1 } }
local sched = diffuse.schedule.vp_linear()
local cond = diffuse.tensor({ 0, 1, 0, 1 })

describe("guidance methods", function()
  it("lists the methods and builds them by name", function()
    local names = guidance.methods()
    for _, m in ipairs({ "ag", "cads", "cfg", "linear_ag" }) do
      assert.is_truthy(table.concat(names, ","):find(m, 1, true), m)
    end
    local g = guidance.new{ method = "cfg", model = gmm, scale = 2 }
    assert.are.equal("cfg", g.method)
    assert.are.equal("x0", g.predicts)
    assert.are.equal(2, g.opts.scale)
    assert.is_truthy(tostring(g):find("scale 2"))
  end)

  it("rejects an unknown method, a scale that is not a number, a missing model, unknown options", function()
    local err = H.error_of(guidance.new, { method = "cgf", model = gmm })
    assert.is_truthy(err:find("guidance.new: unknown method 'cgf' %(valid: .*cfg"))
    assert.is_truthy(H.error_of(guidance.new, { model = gmm }):find("'method' is required"))
    assert.is_truthy(H.error_of(guidance.cfg, { model = gmm, scale = "3" }):find("guidance.cfg: 'scale' must be a finite number, got string"))
    assert.is_truthy(H.error_of(guidance.ag, { model = gmm, scale = 0 / 0 }):find("'scale' must be a finite number"))
    assert.is_truthy(H.error_of(guidance.ag, { model = gmm, gamma = "x" }):find("'gamma' must be a finite number"))
    assert.is_truthy(H.error_of(guidance.cfg, { scale = 3 }):find("guidance.cfg: 'model' is required"))
    assert.is_truthy(H.error_of(guidance.cfg, nil):find("guidance.cfg: options table expected"))
    assert.is_truthy(H.error_of(guidance.cfg, { model = 3 }):find("'model' must be a model"))
    assert.is_truthy(H.error_of(guidance.cfg, { model = function() end }):find("does not say what it predicts"))
    err = H.error_of(guidance.cfg, { model = gmm, sclae = 3 })
    assert.is_truthy(err:find("unknown option 'sclae' %(valid: .*scale"))
    assert.is_truthy(H.error_of(guidance.cfg, { model = gmm, space = "flow" }):find("unknown space 'flow'"))
    assert.is_truthy(H.error_of(guidance.cfg, { model = gmm, rescale = 2 }):find("'rescale' %(phi%) must be in %[0, 1%]"))
    assert.is_truthy(H.error_of(guidance.cfg, { model = gmm, interval = 3 }):find("'interval' must be {lo, hi}"))
    assert.is_truthy(H.error_of(guidance.cfg, { model = gmm, interval_on = "x" }):find("unknown interval_on 'x'"))
    assert.is_truthy(H.error_of(guidance.linear_ag, { model = gmm, fit = 1 }):find("'fit' must be the table"))
    assert.is_truthy(H.error_of(guidance.cads, { model = gmm, tau1 = 0.9, tau2 = 0.5 }):find("need tau1 <= tau2"))
    local plain = diffuse.models.gmm{ means = { { 0 } }, stds = 1 }
    assert.is_truthy(H.error_of(guidance.cads, { model = plain }):find("the mixture has no labels"))
    -- errors point at the caller's line
    assert.is_truthy(H.error_of(function() local g = guidance.cfg{ model = gmm, scale = {} }; return g end):find("guidance_spec.lua:%d+: guidance.cfg"))
    assert.is_truthy(H.error_of(function() local g = guidance.ag{ model = gmm, gamma = {} }; return g end):find("guidance_spec.lua:%d+: guidance.ag"))
  end)
end)

describe("a guidance object is a model", function()
  it("runs with every solver family and counts evaluations per row", function()
    for _, s in ipairs({ { "ddim" }, { "dpmpp_2m" }, { "heun" }, { "unipc" }, { "euler_ancestral" }, { "dpmsolver", order = 3 } }) do
      local g = guidance.cfg{ model = gmm, scale = 2 }
      local o = { model = g, schedule = sched, solver = s[1], steps = 6, shape = { 4, 2 }, seed = 1, cond = cond }
      if s.order then o.order = s.order end
      local x, info = diffuse.sample(o)
      assert.are.equal(4, #x)
      local st = g:stats()
      assert.are.equal(info.nfe, st.calls, s[1])
      assert.are.equal(2 * 4 * info.nfe, st.evaluations, s[1])
      assert.are.equal(4, st.samples)
      assert.are.equal(2 * info.nfe, st.per_sample)
    end
  end)

  it("keeps per-run memory in the state, one run at a time, and nests", function()
    local g = guidance.ag{ model = gmm, scale = 2, gamma = -2 }
    local o = { model = g, schedule = sched, solver = "ddim", steps = 5, shape = { 4, 2 }, seed = 1, cond = cond }
    local x1 = diffuse.sample(o)
    local x2 = diffuse.sample(o) -- a second run starts afresh: same result
    assert.allclose(x1, x2, 0, 0)
    assert.are.equal(2 * 4 * (5 + 1), g:stats().evaluations)
    assert.are.equal(8, g:stats().samples)
    -- cfg over cads: each counts its own rows
    local inner = guidance.cads{ model = gmm, tau1 = 1, tau2 = 1 }
    local outer = guidance.cfg{ model = inner, scale = 2 }
    local xo = diffuse.sample{ model = outer, schedule = sched, solver = "ddim", steps = 5, shape = { 4, 2 }, seed = 1, cond = cond }
    local xr = diffuse.sample{ model = guidance.cfg{ model = gmm, scale = 2 }, schedule = sched, solver = "ddim", steps = 5,
      shape = { 4, 2 }, seed = 1, cond = cond }
    assert.allclose(xr, xo, 1e-5, 1e-5)
    assert.are.equal(2 * 4 * 5, outer:stats().evaluations)
    assert.are.equal(2 * 4 * 5, inner:stats().evaluations)
  end)

  it("the row helpers agree with direct computations", function()
    local a = diffuse.tensor({ { 1, 2, 2 }, { 0, 0, 0 }, { 1, 0, 0 } })
    local b = diffuse.tensor({ { 2, 4, 4 }, { 0, 0, 0 }, { 0, 1, 0 } })
    local cos = guidance.row_cos(a, b)
    assert.is_true(math.abs(cos[1] - 1) < 1e-6 and cos[2] == 1 and cos[3] == 0)
    assert.allclose({ 18, 0, 0 }, guidance.row_dot(a, b))
    local s = guidance.scatter_rows(a, { 3, 1 }, diffuse.tensor({ { 7, 7, 7 }, { 8, 8, 8 } }))
    assert.allclose({ { 8, 8, 8 }, { 0, 0, 0 }, { 7, 7, 7 } }, s)
    assert.allclose({ { 1, 2, 2 }, { 0, 0, 0 }, { 1, 0, 0 } }, a) -- not modified
    assert.allclose({ 1, 0 }, guidance.gather_cond(diffuse.tensor({ 0, 1 }), { 2, 1 }))
    assert.are.equal(3, guidance.gather_cond(3, { 2, 1 }))
    assert.is_true(math.abs(guidance.row_std(a):get(1) - diffuse.tensor({ 1, 2, 2 }):std(nil, nil, 0)) < 1e-6)
  end)
end)
