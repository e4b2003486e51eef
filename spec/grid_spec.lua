local H = require("helper")
local S = require("diffuse.schedule")
local grid = require("diffuse.grid")
local ref = require("support.schedref")()

describe("sigma-space spacings against k-diffusion's get_sigmas_* (float64)", function()
  for key, c in pairs(ref.k_diffusion) do
    it(key, function()
      local spacing = key:match("^(%a+)")
      local got = grid.times(S.edm{}, { spacing = spacing, steps = c.n, sigma_min = c.sigma_min,
        sigma_max = c.sigma_max, rho = c.rho })
      assert.equal(#c.sigmas, #got)
      assert.allclose(c.sigmas, got, 1e-15, 1e-9)
    end)
  end
  it("polyexponential with rho = 1 is the exponential spacing; its default rho is 1", function()
    local s = S.edm{}
    local a = grid.times(s, { spacing = "polyexponential", steps = 12 })
    local b = grid.times(s, { spacing = "exponential", steps = 12 })
    assert.allclose(b, a, 0, 1e-12)
    local c = grid.times(s, { spacing = "polyexponential", steps = 12, rho = 2 })
    assert.is_true(c[6] < a[6]) -- rho > 1 crowds the steps toward small sigma
  end)
  it("map back to time through t_of_sigma_hat on other families", function()
    local s = S.vp_cosine{}
    local ts = grid.times(s, { spacing = "polyexponential", steps = 8, rho = 1.5 })
    assert.equal(s.t_start, ts[1])
    assert.equal(0, ts[9])
    local lmin, lmax = math.log(s:sigma_hat(s.t_end)), math.log(s:sigma_hat(s.t_start))
    for i = 2, 8 do
      local ramp = 1 - (i - 1) / 7
      assert.allclose(math.exp(ramp ^ 1.5 * (lmax - lmin) + lmin), s:sigma_hat(ts[i]), 0, 1e-10)
    end
  end)
end)

describe("diffusers timestep spacings (DDIMScheduler.set_timesteps)", function()
  for key, c in pairs(ref.diffusers_timesteps) do
    it(key, function()
      local got = grid.discrete_timesteps(c.spacing, c.steps, { n = c.n, steps_offset = c.steps_offset })
      local want = c.timesteps
      -- diffusers' trailing returns a spurious last timestep -1 for some step counts; we do not.
      if #want == c.steps + 1 and want[#want] == -1 then want = { table.unpack(want, 1, c.steps) } end
      assert.same(want, got)
    end)
  end
  it("become times (n + 1) / N on a discrete schedule, then t_end (default 0)", function()
    local s = S.vp_discrete{}
    local ts = grid.times(s, { spacing = "leading", steps = 10, steps_offset = 1 })
    assert.same({ 0.902, 0.802, 0.702, 0.602, 0.502, 0.402, 0.302, 0.202, 0.102, 0.002, 0 }, ts)
    assert.same({ 901, 801, 701, 601, 501, 401, 301, 201, 101, 1 }, (function()
      local out = {}
      for i = 1, 10 do out[i] = s:point(ts[i]).timestep end
      return out
    end)())
    local tr = grid.times(s, { spacing = "trailing", steps = 4, t_end = 0.001 })
    assert.same({ 1, 0.75, 0.5, 0.25, 0.001 }, tr)
    assert.same({ 1, 0.25, 0 }, grid.times(S.vp_linear{}, { spacing = "linspace", steps = 2, n = 4 }))
  end)
  it("an explicit t_start limits the training steps the spacing covers", function()
    local s = S.vp_discrete{}
    assert.same({ 0.5, 0.25, 0 }, grid.times(s, { spacing = "trailing", steps = 2, t_start = 0.5 }))
    assert.same({ 0.5, 0.001, 0 }, grid.times(s, { spacing = "linspace", steps = 2, t_start = 0.5 }))
  end)
  it("zero terminal SNR with trailing starts at pure noise, t = 1 (timestep 999)", function()
    local s = S.vp_discrete{ betas = "scaled_linear", beta_start = 0.00085, beta_end = 0.012, zero_snr = true }
    local ts = grid.times(s, { spacing = "trailing", steps = 5 })
    assert.same({ 1, 0.8, 0.6, 0.4, 0.2, 0 }, ts)
    assert.equal(999, s:point(ts[1]).timestep)
  end)
  it("rejects what diffusers cannot do", function()
    local s = S.vp_discrete{}
    assert.matches("needs steps <= 1000", H.error_of(grid.times, s, { spacing = "trailing", steps = 1001 }), 1, true)
    assert.matches("gives timestep 1000", H.error_of(grid.times, s, { spacing = "leading", steps = 1000, steps_offset = 1 }), 1, true)
    assert.matches("not edm", H.error_of(grid.times, S.edm{}, { spacing = "linspace", steps = 10 }), 1, true)
    assert.matches("n = 10 but the schedule has 1000", H.error_of(grid.times, s, { spacing = "linspace", steps = 5, n = 10 }), 1, true)
    assert.matches("t_end = 0.5 must be >= 0 and below", H.error_of(grid.times, s, { spacing = "linspace", steps = 5, t_end = 0.5 }), 1, true)
    assert.matches("unknown spacing 'cosine'", H.error_of(grid.discrete_timesteps, "cosine", 5), 1, true)
  end)
  it("round half to even like numpy", function()
    assert.same({ 0, 2, 2, -2, 4, 3 }, { grid.round_half_even(0.5), grid.round_half_even(1.5), grid.round_half_even(2.5),
      grid.round_half_even(-2.5), grid.round_half_even(3.5), grid.round_half_even(2.50001) })
  end)
end)

describe("grid.times", function()
  it("keeps the existing spacings' numbers (vp_linear, edm)", function()
    local s = S.vp_linear{}
    assert.same({ 1, 0.5005, 0.001 }, grid.times(s, { spacing = "time_uniform", steps = 2 }))
    local e = S.edm{}
    local k = grid.times(e, { spacing = "karras", steps = 3 })
    local a, b = 80 ^ (1 / 7), 0.002 ^ (1 / 7)
    assert.same({ 80, (a + 0.5 * (b - a)) ^ 7, (a + (b - a)) ^ 7, 0 }, { k[1], k[2], k[3], k[4] })
  end)
  it("starting at lambda = -inf: time spacings work, logSNR and sigma spacings explain", function()
    local rf = S.rectified_flow{}
    assert.same({ 1, 0.5, 0 }, grid.times(rf, { spacing = "time_uniform", steps = 2, t_start = 1, t_end = 0 }))
    assert.matches("spacing 'logSNR' needs a finite lambda at both ends",
      H.error_of(grid.times, rf, { spacing = "logSNR", steps = 4, t_start = 1 }), 1, true)
    assert.matches("spacing 'karras' needs 0 < sigma_min < sigma_max < inf",
      H.error_of(grid.times, rf, { spacing = "karras", steps = 4, t_start = 1 }), 1, true)
    local d = grid.times(rf, { spacing = "logSNR", steps = 4 })
    assert.equal(0.999, d[1])
    assert.allclose(0, rf:lambda(d[3]), 1e-12, 0)
  end)
  it("rejects unknown options, listing the valid ones", function()
    assert.matches("unknown option 'step'; valid: n, rho, sigma_max, sigma_min, spacing, steps, steps_offset, t_end, " ..
      "t_start, times", H.error_of(grid.times, S.vp_linear{}, { step = 4 }), 1, true)
    assert.matches("valid: exponential, karras, leading, linspace, logSNR, polyexponential, time_quadratic, " ..
      "time_uniform, trailing", H.error_of(grid.times, S.vp_linear{}, { spacing = "x", steps = 4 }), 1, true)
  end)
end)
