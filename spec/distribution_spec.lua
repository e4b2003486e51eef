-- Stochastic samplers sample the right distribution: on a 1-D three-component Gaussian
-- mixture (exact denoiser in double, below), 2000 samples from each ancestral / SDE sampler
-- at 200 steps pass a one-sample Kolmogorov-Smirnov test against the mixture's exact CDF at
-- level 0.001 (fixed seed, so the outcome is deterministic), and the same sampler with its
-- noise doubled fails it.
--
-- Statistics sqrt(n) * D measured when this spec was written (seed 1234; the critical value
-- is 1.949 at level 0.001; KS_PRINT=1 in the environment prints them):
--
--   sampler              schedule   n = 2000, correct    n = 1000, noise doubled
--   euler_ancestral      edm        0.80                 3.43
--   dpm_2_ancestral      edm        0.63                 3.55
--   dpmpp_2s_ancestral   edm        0.64                 3.54
--   dpmpp_sde            edm        0.84                 4.11
--   dpmpp_2m_sde         edm        0.63                 3.67
--   dpmpp_3m_sde         edm        0.62                 3.66
--   dpmpp_2m_sde         vp_linear  0.48                 3.75
--   ddpm (small)         vp_linear  0.85                 3.52
--   ddpm (large)         vp_linear  0.75                 3.63
--
-- (At n = 30000 the correct samplers give D between 0.003 and 0.011: euler_ancestral, the
-- first-order one, has the largest discretisation bias.  s_noise = 1.2 instead of 1 is
-- detected by some samplers at n = 3000, not reliably: the test is for gross errors.)
require("helper")
local diffuse = require("diffuse")

local W = { 0.25, 0.45, 0.30 }
local MU = { -2.0, 0.4, 2.2 }
local SD = { 0.35, 0.5, 0.25 }
local exp, log, sqrt = math.exp, math.log, math.sqrt

-- E[x0 | x0 + sh * eps = xh] for the mixture, in double, for every entry of the list v
-- (in place).  Component k given xh: N(mu_k, s_k^2 + sh^2) evidence, posterior mean
-- mu_k + s_k^2 / (s_k^2 + sh^2) (xh - mu_k).
local function denoise_list(v, sh)
  local c, h, a = {}, {}, {}
  for k = 1, 3 do
    local var = SD[k] ^ 2 + sh * sh
    c[k] = SD[k] ^ 2 / var                  -- shrinkage
    h[k] = -0.5 / var
    a[k] = log(W[k]) - 0.5 * log(var)
  end
  local m1, m2, m3 = MU[1], MU[2], MU[3]
  local c1, c2, c3, h1, h2, h3, a1, a2, a3 = c[1], c[2], c[3], h[1], h[2], h[3], a[1], a[2], a[3]
  for i = 1, #v do
    local x = v[i]
    local d1, d2, d3 = x - m1, x - m2, x - m3
    local l1, l2, l3 = a1 + h1 * d1 * d1, a2 + h2 * d2 * d2, a3 + h3 * d3 * d3
    local best = math.max(l1, l2, l3)
    local e1, e2, e3 = exp(l1 - best), exp(l2 - best), exp(l3 - best)
    v[i] = (e1 * (m1 + c1 * d1) + e2 * (m2 + c2 * d2) + e3 * (m3 + c3 * d3)) / (e1 + e2 + e3)
  end
  return v
end

-- A diffuse model predicting x0 on any schedule: D(x / alpha, sigma / alpha).
local model = setmetatable({ predicts = "x0" }, {
  __call = function(_, x, p)
    local v, a = x:view(-1):totable(), p.alpha
    if a ~= 1 then for i = 1, #v do v[i] = v[i] / a end end
    return diffuse.tensor(denoise_list(v, p.sigma / a)):view(x:shape())
  end,
})

-- erfc by Numerical Recipes' erfcc (relative error below 1.2e-7: plenty for a KS test).
local function erfc(x)
  local z = math.abs(x)
  local t = 1 / (1 + 0.5 * z)
  local r = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
    t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 +
    t * 0.17087277)))))))))
  return x >= 0 and r or 2 - r
end

local function cdf(x)
  local s = 0
  for k = 1, 3 do s = s + W[k] * 0.5 * erfc(-(x - MU[k]) / (SD[k] * sqrt(2))) end
  return s
end

-- One-sample KS statistic D = sup |F_n - F|.
local function ks(xs)
  table.sort(xs)
  local n, d = #xs, 0
  for i, x in ipairs(xs) do
    local f = cdf(x)
    d = math.max(d, i / n - f, f - (i - 1) / n)
  end
  return d
end

-- Critical value of sqrt(n) D at level 0.001 (Kolmogorov's limit law).
local K_CRIT = 1.949

local function schedule_of(kind)
  if kind == "edm" then return diffuse.schedule.edm({ sigma_min = 0.002, sigma_max = 80 }) end
  return diffuse.schedule.vp_linear()
end

local function draw_samples(r, n, noise_scale)
  local o = { model = model, schedule = schedule_of(r.schedule), solver = r.solver, steps = 200,
    shape = { n, 1 }, seed = 1234 }
  -- karras grids end at t = 0 (the data) on every schedule
  for k, v in pairs(r.opts or {}) do o[k] = v end
  if noise_scale then
    -- the sampler's own draws, scaled: a lazily filled noise list
    o.noise = setmetatable({}, { __index = function(t, k)
      local z = diffuse.randn({ n, 1 }, { seed = 1234, draw = k }):mul(noise_scale)
      rawset(t, k, z)
      return z
    end })
  end
  local x = diffuse.sample(o)
  return x:view(-1):totable()
end

local runs = {
  { solver = "euler_ancestral", schedule = "edm" },
  { solver = "dpm_2_ancestral", schedule = "edm" },
  { solver = "dpmpp_2s_ancestral", schedule = "edm" },
  { solver = "dpmpp_sde", schedule = "edm" },
  { solver = "dpmpp_2m_sde", schedule = "edm" },
  { solver = "dpmpp_3m_sde", schedule = "edm" },
  { solver = "dpmpp_2m_sde", schedule = "vp" },
  { solver = "ddpm", schedule = "vp" },
  { solver = "ddpm", schedule = "vp", opts = { variance = "large" } },
}

describe("stochastic samplers match the mixture in distribution (KS, 200 steps)", function()
  it("the exact CDF is right (quadrature of the mixture density)", function()
    -- independent check of cdf(): Simpson's rule on the density from -8 to 1.3
    local function pdf(x)
      local s = 0
      for k = 1, 3 do s = s + W[k] * exp(-(x - MU[k]) ^ 2 / (2 * SD[k] ^ 2)) / (SD[k] * sqrt(2 * math.pi)) end
      return s
    end
    local a, b, m = -8, 1.3, 2000
    local h, s = (b - a) / m, pdf(a) + pdf(b)
    for i = 1, m - 1 do s = s + (i % 2 == 1 and 4 or 2) * pdf(a + i * h) end
    assert.is_true(math.abs(s * h / 3 - cdf(b)) < 1e-6)
  end)

  for _, r in ipairs(runs) do
    local label = ("%s on %s%s"):format(r.solver, r.schedule, r.opts and " (variance = large)" or "")
    it(label .. " passes at n = 2000", function()
      local n = 2000
      local d = ks(draw_samples(r, n))
      if os.getenv("KS_PRINT") then print(label, n, sqrt(n) * d) end
      assert.is_true(sqrt(n) * d < K_CRIT, ("sqrt(n) D = %.3f >= %.3f"):format(sqrt(n) * d, K_CRIT))
    end)
    it(label .. " with doubled noise fails at n = 1000", function()
      local n = 1000
      local d = ks(draw_samples(r, n, 2))
      if os.getenv("KS_PRINT") then print(label, n, sqrt(n) * d) end
      assert.is_true(sqrt(n) * d > K_CRIT, ("sqrt(n) D = %.3f"):format(sqrt(n) * d))
    end)
  end
end)
