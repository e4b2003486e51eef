local H = require("helper")
local S = require("diffuse.schedule")
local grid = require("diffuse.grid")
local ref = require("support.schedref")()

local RT = 1e-9 -- relative tolerance against the float64 reference runs

local function map(list, f)
  local out = {}
  for i, v in ipairs(list) do out[i] = f(v) end
  return out
end

local function build(kind, opts)
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  return S[kind](o)
end

-- Every schedule case of the fixture: values at t, t_of_lambda, and the official DPM-Solver's
-- get_time_steps grids.
local function check_case(kind, c)
  local s = build(kind, c.options)
  assert.allclose(c.log_alpha, map(c.t, function(t) return s:log_alpha(t) end), 1e-15, RT)
  assert.allclose(c.alpha, map(c.t, function(t) return s:alpha(t) end), 1e-15, RT)
  assert.allclose(c.sigma, map(c.t, function(t) return s:sigma(t) end), 1e-15, RT)
  assert.allclose(c.lambda, map(c.t, function(t) return s:lambda(t) end), 1e-15, RT)
  for i, t in ipairs(c.t) do
    local p = s:point(t)
    assert.allclose({ c.alpha[i], c.sigma[i], c.lambda[i], c.sigma[i] / c.alpha[i] },
      { p.alpha, p.sigma, p.lambda, p.sigma_hat }, 1e-15, RT)
  end
  if #c.lambdas > 0 then
    assert.allclose(c.t_of_lambda, map(c.lambdas, function(l) return s:t_of_lambda(l) end), 1e-15, RT)
  end
  for key, want in pairs(c.grids) do
    local spacing, n = key:match("^(.-)/(%d+)$")
    local got = grid.times(s, { spacing = spacing, steps = tonumber(n) // 1, t_start = c.t_start, t_end = c.t_end })
    -- With zero terminal SNR the official inverse interpolation meets the -inf keypoint and
    -- returns NaN for the first logSNR time; ours is t_start itself.
    if want[1] ~= want[1] then
      assert.equal(c.t_start, got[1])
      want, got = { table.unpack(want, 2) }, { table.unpack(got, 2) }
    end
    assert.allclose(want, got, 1e-15, RT)
  end
  return s
end

describe("schedules against the official DPM-Solver NoiseScheduleVP (float64)", function()
  for name, c in pairs(ref.vp_discrete) do
    it("vp_discrete " .. name .. ": alpha, sigma, lambda, t_of_lambda, grids, model input time", function()
      local s = check_case("vp_discrete", c)
      assert.equal(c.n, s.n)
      assert.allclose(c.model_input_time, map(c.t, function(t) return s:point(t).timestep end), 1e-9, RT)
    end)
    it("vp_discrete " .. name .. ": betas and alphas_cumprod match diffusers", function()
      local s = build("vp_discrete", c.options)
      assert.allclose(c.alphas_cumprod, map(c.index, function(i) return s.alphas_cumprod[i + 1] end), 1e-15, RT)
      assert.allclose(c.betas, map(c.index, function(i) return s.beta_values[i + 1] end), 1e-15, RT)
    end)
  end
  it("vp_cosine", function() check_case("vp_cosine", ref.vp_cosine) end)
  it("vp_linear (unchanged family)", function() check_case("vp_linear", ref.vp_linear) end)
end)

-- Round trips, monotonicity and identities on every family.
local families = {
  { "vp_linear", S.vp_linear{} },
  { "vp_discrete linear", S.vp_discrete{} },
  { "vp_discrete scaled_linear", S.vp_discrete{ betas = "scaled_linear", beta_start = 0.00085, beta_end = 0.012 } },
  { "vp_discrete squaredcos_cap_v2", S.vp_discrete{ betas = "squaredcos_cap_v2" } },
  { "vp_discrete zero_snr", S.vp_discrete{ betas = "scaled_linear", beta_start = 0.00085, beta_end = 0.012, zero_snr = true } },
  { "vp_discrete list", S.vp_discrete{ betas = { 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5 } } },
  { "vp_cosine", S.vp_cosine{} },
  { "ve", S.ve{} },
  { "edm", S.edm{} },
  { "rectified_flow", S.rectified_flow{} },
}

describe("schedule identities", function()
  for _, f in ipairs(families) do
    local name, s = f[1], f[2]
    local ts = grid.linspace(s.t_start, s.t_end, 301)
    it(name .. ": t -> lambda -> t and sigma_hat -> t -> sigma_hat round trips", function()
      for _, t in ipairs(ts) do
        local lam = s:lambda(t)
        assert.allclose(t, s:t_of_lambda(lam), 1e-13, 1e-9)
        local sh = s:sigma_hat(t)
        assert.allclose(sh, s:sigma_hat(s:t_of_sigma_hat(sh)), 1e-13, 1e-9)
      end
    end)
    it(name .. ": alpha decreases, sigma and sigma_hat increase, lambda decreases in t", function()
      for i = 2, #ts do -- ts decreases
        local a, b = ts[i - 1], ts[i]
        assert.is_true(s:alpha(a) <= s:alpha(b), ("alpha at %.17g vs %.17g"):format(a, b))
        assert.is_true(s:sigma(a) > s:sigma(b), ("sigma at %.17g vs %.17g"):format(a, b))
        assert.is_true(s:sigma_hat(a) > s:sigma_hat(b))
        assert.is_true(s:lambda(a) < s:lambda(b))
      end
    end)
    it(name .. ": lambda = log(alpha / sigma), sigma_hat = sigma / alpha, t = 0 is the data", function()
      for _, t in ipairs(ts) do
        local p = s:point(t)
        assert.allclose(math.log(p.alpha / p.sigma), p.lambda, 1e-12, 1e-10)
        assert.allclose(p.sigma / p.alpha, p.sigma_hat, 0, 1e-12)
        if s.kind:find("^vp_") then assert.allclose(1, p.alpha ^ 2 + p.sigma ^ 2, 1e-14, 0) end
      end
      assert.equal(0, s:sigma(0))
      assert.equal(math.huge, s:lambda(0))
      assert.equal(0, s:t_of_lambda(math.huge))
      assert.equal(0, s:t_of_sigma_hat(0))
    end)
  end
end)

describe("vp_discrete", function()
  it("puts step n at t = (n + 1) / N with alpha^2 = alpha_bar_n, and timestep = n", function()
    local s = S.vp_discrete{ betas = "scaled_linear", beta_start = 0.00085, beta_end = 0.012 }
    local ab = 1
    for n = 0, 999 do
      ab = ab * (1 - s.beta_values[n + 1])
      local t = (n + 1) / 1000
      assert.allclose(ab, s:alpha(t) ^ 2, 0, 1e-12)
      local ts = s:point(t).timestep
      assert.equal(n, ts)
    end
    assert.equal(1, s.t_start)
    assert.equal(1e-3, s.t_end)
  end)
  it("interpolates log alpha linearly between steps (and toward alpha = 1 at t = 0)", function()
    local s = S.vp_discrete{}
    local a, b = s:log_alpha(0.25), s:log_alpha(0.251)
    assert.allclose(0.3 * a + 0.7 * b, s:log_alpha(0.2507), 1e-16, 1e-12)
    assert.allclose(0.5 * s:log_alpha(0.001), s:log_alpha(0.0005), 1e-18, 1e-12)
  end)
  it("zero_snr: alpha_bar ends at 0, sigma(1) = 1, lambda(1) = -inf; runs start at the last finite step", function()
    local s = S.vp_discrete{ betas = "scaled_linear", beta_start = 0.00085, beta_end = 0.012, zero_snr = true }
    local plain = S.vp_discrete{ betas = "scaled_linear", beta_start = 0.00085, beta_end = 0.012 }
    assert.equal(0, s.alphas_cumprod[1000])
    assert.allclose(plain.alphas_cumprod[1], s.alphas_cumprod[1], 0, 1e-14)
    assert.equal(1, s:sigma(1))
    assert.equal(-math.huge, s:lambda(1))
    assert.equal(math.huge, s:point(1).sigma_hat)
    assert.equal(1, s:t_of_lambda(-math.huge))
    assert.equal(0.999, s.t_start)
    assert.equal(998, s:point(s.t_start).timestep)
    -- on the last segment alpha is linear in t, from alpha(0.999) to 0
    assert.allclose(0.5 * s:alpha(0.999), s:alpha(0.9995), 0, 1e-12)
    assert.allclose(0.9995, s:t_of_lambda(s:lambda(0.9995)), 0, 1e-12)
  end)
  it("accepts a list of betas; checks its options", function()
    local s = S.vp_discrete{ betas = { 0.1, 0.2, 0.3 } }
    assert.equal(3, s.n)
    assert.allclose(0.9 * 0.8 * 0.7, s:alpha(1) ^ 2, 0, 1e-14)
    assert.matches("diffuse.schedule.vp_discrete{betas=list, n=3, zero_snr=false}", tostring(s), 1, true)
    assert.matches("unknown option 'beta'; valid: beta_end, beta_start, betas, n, t_end, t_start, zero_snr",
      H.error_of(S.vp_discrete, { beta = 1 }), 1, true)
    assert.matches("unknown betas 'cosine'", H.error_of(S.vp_discrete, { betas = "cosine" }), 1, true)
    assert.matches("betas[2] must be a number in (0, 1]", H.error_of(S.vp_discrete, { betas = { 0.1, 0 } }), 1, true)
    assert.matches("betas[1] = 1 before the last step", H.error_of(S.vp_discrete, { betas = { 1, 0.5 } }), 1, true)
    assert.matches("n = 4 but the betas list has 2", H.error_of(S.vp_discrete, { betas = { 0.1, 0.2 }, n = 4 }), 1, true)
    assert.matches("need 0 < beta_start <= beta_end < 1", H.error_of(S.vp_discrete, { beta_start = 0.1, beta_end = 0.01 }), 1, true)
    assert.matches("n must be an integer >= 2", H.error_of(S.vp_discrete, { n = 1.5 }), 1, true)
    assert.matches("option 'zero_snr' must be a boolean", H.error_of(S.vp_discrete, { zero_snr = 1 }), 1, true)
    assert.matches("need t_start > t_end", H.error_of(S.vp_discrete, { t_start = 0.5, t_end = 0.6 }), 1, true)
  end)
  it("a last beta of 1 is a zero terminal SNR too", function()
    local s = S.vp_discrete{ betas = { 0.1, 0.2, 1 } }
    assert.is_true(s.zero_terminal)
    assert.equal(0, s:alpha(1))
    assert.allclose(2 / 3, s.t_start, 0, 1e-15)
  end)
end)

describe("vp_cosine, ve, rectified_flow", function()
  it("vp_cosine has the closed forms", function()
    local s = S.vp_cosine{ s = 0.02 }
    local f = function(t) return math.cos((t + 0.02) / 1.02 * math.pi / 2) end
    assert.allclose(f(0.3) / f(0), s:alpha(0.3), 0, 1e-14)
    assert.equal(0.9946, s.t_start)
    assert.matches("need s > 0", H.error_of(S.vp_cosine, { s = -1 }), 1, true)
    assert.matches("need t_start < 1", H.error_of(S.vp_cosine, { t_start = 1 }), 1, true)
  end)
  it("ve: sigma = sigma_min (sigma_max / sigma_min)^t, alpha = 1", function()
    local s = S.ve{ sigma_min = 0.01, sigma_max = 50 }
    assert.allclose(50, s:sigma(1), 0, 1e-14)
    assert.allclose(0.01 * 5000 ^ 0.3, s:sigma(0.3), 0, 1e-14)
    assert.equal(1, s:alpha(0.3))
    assert.equal(s:sigma(0.3), s:sigma_hat(0.3))
    assert.matches("not above sigma_min", H.error_of(s.t_of_sigma_hat, s, 0.005), 1, true)
    assert.matches("need 0 < sigma_min < sigma_max", H.error_of(S.ve, { sigma_min = 2, sigma_max = 1 }), 1, true)
    assert.matches("unknown option 'sigma'", H.error_of(S.ve, { sigma = 2 }), 1, true)
  end)
  it("rectified_flow: alpha = 1 - t, sigma = t, derivatives in point, pure noise at t = 1", function()
    local s = S.rectified_flow{}
    local p = s:point(0.3)
    assert.allclose({ 0.7, 0.3, math.log(0.7 / 0.3), 0.3 / 0.7, -1, 1 },
      { p.alpha, p.sigma, p.lambda, p.sigma_hat, p.dalpha, p.dsigma }, 0, 1e-15)
    assert.allclose(1 / (1 + math.exp(1.5)), s:t_of_lambda(1.5), 0, 1e-15)
    assert.allclose(1 / (1 + math.exp(-800)), s:t_of_lambda(-800), 0, 1e-15)
    assert.allclose(math.exp(-800), s:t_of_lambda(800), 0, 1e-15)
    local q = s:point(1)
    assert.same({ 0, 1, -math.huge, math.huge }, { q.alpha, q.sigma, q.lambda, q.sigma_hat })
    assert.equal(0.999, s.t_start)
    assert.matches("need t_start <= 1", H.error_of(S.rectified_flow, { t_start = 2 }), 1, true)
    assert.matches("unknown option 'shift'; valid: t_end, t_start", H.error_of(S.rectified_flow, { shift = 3 }), 1, true)
  end)
  it("rectified_flow's flow prediction converts back to x0 and eps (predict.lua)", function()
    local diffuse = H.diffuse
    local predict = require("diffuse.predict")
    local s = S.rectified_flow{}
    local x0 = diffuse.tensor({ { 1, -2 }, { 0.5, 3 } })
    local eps = diffuse.tensor({ { 0.3, 0.1 }, { -1, 2 } })
    for _, t in ipairs({ 1, 0.6, 0.01 }) do
      local p = s:point(t)
      local x = diffuse.lincomb({ x0, eps }, { p.alpha, p.sigma })
      local gx0, geps = predict.to_x0_eps("flow", eps:sub(x0), x, p)
      assert.allclose(x0, gx0, 1e-5, 1e-5)
      assert.allclose(eps, geps, 1e-5, 1e-5)
    end
  end)
  it("tostring names the family and its parameters", function()
    assert.equal("diffuse.schedule.vp_cosine{s=0.008}", tostring(S.vp_cosine{}))
    assert.equal("diffuse.schedule.ve{sigma_min=0.01, sigma_max=50.0}", tostring(S.ve{}))
    assert.equal("diffuse.schedule.rectified_flow{}", tostring(S.rectified_flow{}))
  end)
end)
