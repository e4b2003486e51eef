-- Exact models: every output is checked against an independent brute-force computation in Lua
-- doubles (or the parity fixture's reference denoiser).
local H = require("helper")
local P = require("support.parity")
local diffuse = require("diffuse")
local models = diffuse.models

local inf = math.huge

-- ---- brute-force references in plain Lua doubles ----

-- Diagonal Gaussian mixture posterior for rows of x (nested table) at (alpha, sigma):
-- returns the posterior means, responsibilities and log-densities.
local function bf_gmm(means, vars, weights, rows, a, s)
  local Kc, D = #means, #means[1]
  local outs, resps, lses = {}, {}, {}
  for b = 1, #rows do
    local x = rows[b]
    local l, mx = {}, -inf
    for k = 1, Kc do
      if weights[k] > 0 then
        local v = math.log(weights[k])
        for j = 1, D do
          local V = a * a * vars[k][j] + s * s
          v = v - 0.5 * ((x[j] - a * means[k][j]) ^ 2 / V + math.log(2 * math.pi * V))
        end
        l[k] = v
      else
        l[k] = -inf
      end
      if l[k] > mx then mx = l[k] end
    end
    local z = 0
    for k = 1, Kc do l[k] = math.exp(l[k] - mx); z = z + l[k] end
    local o, r = {}, {}
    for j = 1, D do o[j] = 0 end
    for k = 1, Kc do
      r[k] = l[k] / z
      for j = 1, D do
        local V = a * a * vars[k][j] + s * s
        o[j] = o[j] + r[k] * (means[k][j] + a * vars[k][j] / V * (x[j] - a * means[k][j]))
      end
    end
    outs[b], resps[b], lses[b] = o, r, mx + math.log(z)
  end
  return outs, resps, lses
end

-- Empirical posterior mean over data rows (nested table).
local function bf_empirical(data, rows, a, s)
  local out = {}
  for b = 1, #rows do
    local x = rows[b]
    local l, mx = {}, -inf
    for m = 1, #data do
      local d2 = 0
      for j = 1, #x do d2 = d2 + (x[j] - a * data[m][j]) ^ 2 end
      l[m] = -d2 / (2 * s * s)
      if l[m] > mx then mx = l[m] end
    end
    local z, o = 0, {}
    for j = 1, #x do o[j] = 0 end
    for m = 1, #data do
      local w = math.exp(l[m] - mx)
      z = z + w
      for j = 1, #x do o[j] = o[j] + w * data[m][j] end
    end
    for j = 1, #x do o[j] = o[j] / z end
    out[b] = o
  end
  return out
end

-- Solve A y = b (Gauss-Jordan with partial pivoting), A square nested table.
local function solve(A, b)
  local n = #A
  local M = {}
  for i = 1, n do
    M[i] = {}
    for j = 1, n do M[i][j] = A[i][j] end
    M[i][n + 1] = b[i]
  end
  for c = 1, n do
    local p = c
    for r = c + 1, n do if math.abs(M[r][c]) > math.abs(M[p][c]) then p = r end end
    M[c], M[p] = M[p], M[c]
    for r = 1, n do
      if r ~= c then
        local f = M[r][c] / M[c][c]
        for j = c, n + 1 do M[r][j] = M[r][j] - f * M[c][j] end
      end
    end
  end
  local y = {}
  for i = 1, n do y[i] = M[i][n + 1] / M[i][i] end
  return y
end

local function det(A)
  local n, M, d = #A, {}, 1
  for i = 1, n do M[i] = {} for j = 1, n do M[i][j] = A[i][j] end end
  for c = 1, n do
    local p = c
    for r = c + 1, n do if math.abs(M[r][c]) > math.abs(M[p][c]) then p = r end end
    if p ~= c then M[c], M[p] = M[p], M[c]; d = -d end
    d = d * M[c][c]
    for r = c + 1, n do
      local f = M[r][c] / M[c][c]
      for j = c, n do M[r][j] = M[r][j] - f * M[c][j] end
    end
  end
  return d
end

local function pt(a, s) return { t = 0.5, alpha = a, sigma = s, lambda = math.log(a / s), sigma_hat = s / a } end

-- ---- Gaussian mixture ----

describe("models.gmm", function()
  local prob = P.load().problem
  local g = models.gmm { means = prob.means, stds = prob.stds, weights = prob.weights }

  it("matches the parity fixture's double-precision denoiser in sigma space and in VP form", function()
    assert.equal("x0", g.predicts)
    local x = diffuse.randn({ 32, prob.dim }, { seed = 1 }):mul(2)
    for _, sh in ipairs({ 0, 1e-3, 0.05, 0.3, 1, 5, 80 }) do
      local ref = P.posterior_mean(prob, x:totable(), sh)
      assert.allclose(ref, g(x, pt(1, sh)), 2e-6, 1e-5)
    end
    -- VP point: x = alpha x0 + sigma eps, D = posterior_mean(x / alpha, sigma / alpha)
    for _, a in ipairs({ 0.999, 0.7, 0.05 }) do
      local s = math.sqrt(1 - a * a)
      local rows = x:totable()
      for b = 1, #rows do for j = 1, #rows[b] do rows[b][j] = rows[b][j] / a end end
      assert.allclose(P.posterior_mean(prob, rows, s / a), g(x, pt(a, s)), 2e-5, 1e-4)
    end
  end)

  it("gives x at sigma = 0 and the mixture mean at alpha = 0", function()
    local x = diffuse.randn({ 5, 2 }, { seed = 2 })
    assert.allclose(x, g(x, { t = 0, alpha = 1, sigma = 0 }), 1e-6)
    local mean = { 0, 0 }
    for k = 1, #prob.weights do
      for j = 1, 2 do mean[j] = mean[j] + prob.weights[k] * prob.means[k][j] end
    end
    local out = g(x, { t = 1, alpha = 0, sigma = 1 })
    for b = 1, 5 do assert.allclose(mean, out[b]:totable(), 1e-6) end
  end)

  local dmeans = { { 0, 1, -1 }, { 2, 0, 0.5 }, { -1, -2, 1 }, { 0.5, 0.5, 3 } }
  local dvars = { { 0.1, 0.5, 0.2 }, { 1, 0.05, 0.3 }, { 0.4, 0.4, 0.01 }, { 0.2, 2, 0.7 } }
  local dweights = { 0.1, 0.4, 0.3, 0.2 }
  local dlabels = { 3, 7, 3, 7 }
  local dg = models.gmm { means = dmeans, vars = dvars, weights = { 1, 4, 3, 2 }, labels = dlabels }

  it("diagonal mixtures: denoiser, responsibilities, log_prob against brute force", function()
    local x = diffuse.randn({ 9, 3 }, { seed = 3 }):mul(1.5)
    for _, ps in ipairs({ { 1, 0 }, { 1, 0.2 }, { 0.6, 0.8 }, { 0.1, 3 } }) do
      local a, s = ps[1], ps[2]
      local o, r, l = bf_gmm(dmeans, dvars, dweights, x:totable(), a, s)
      assert.allclose(o, dg(x, pt(a, s)), 1e-5, 1e-5)
      assert.allclose(r, dg:responsibilities(x, pt(a, s)), 1e-6, 1e-5)
      assert.allclose(l, dg:log_prob(x, { point = pt(a, s) }), 1e-4, 1e-6)
    end
    local _, _, l0 = bf_gmm(dmeans, dvars, dweights, x:totable(), 1, 0)
    assert.allclose(l0, dg:log_prob(x), 1e-4, 1e-6)
  end)

  it("the class-conditional denoiser is the sub-mixture's (weights renormalised)", function()
    local x = diffuse.randn({ 7, 3 }, { seed = 4 })
    local sub7 = models.gmm { means = { dmeans[2], dmeans[4] }, vars = { dvars[2], dvars[4] }, weights = { 4, 2 } }
    local sub3 = models.gmm { means = { dmeans[1], dmeans[3] }, vars = { dvars[1], dvars[3] }, weights = { 0.1, 0.3 } }
    for _, s in ipairs({ 0.05, 0.5, 2 }) do
      assert.allclose(sub7(x, pt(1, s)), dg(x, pt(1, s), 7), 1e-6)
      assert.allclose(sub3(x, pt(0.8, s)), dg(x, pt(0.8, s), 3), 1e-6)
      local o = bf_gmm({ dmeans[2], dmeans[4] }, { dvars[2], dvars[4] }, { 2 / 3, 1 / 3 }, x:totable(), 1, s)
      assert.allclose(o, dg(x, pt(1, s), 7), 1e-5, 1e-5)
      assert.allclose(sub7:log_prob(x), dg:log_prob(x, { cond = 7 }), 1e-4, 1e-6)
    end
  end)

  it("per-row cond (list or tensor) equals row-by-row calls", function()
    local x = diffuse.randn({ 6, 3 }, { seed = 5 })
    local cond = { 3, 7, 7, 3, 3, 7 }
    local out = dg(x, pt(1, 0.4), cond)
    local out2 = dg(x, pt(1, 0.4), diffuse.tensor(cond))
    for i = 1, 6 do
      local one = dg(x:narrow(1, i, 1), pt(1, 0.4), cond[i])
      assert.allclose(one[1], out[i], 1e-7)
    end
    assert.allclose(out, out2, 0)
  end)

  it("class_prob is p(y | x_t) by Bayes' rule", function()
    local x = diffuse.randn({ 5, 3 }, { seed = 6 })
    local p, classes = dg:class_prob(x, pt(1, 0.3))
    assert.same({ 3, 7 }, classes)
    local _, r = bf_gmm(dmeans, dvars, dweights, x:totable(), 1, 0.3)
    for b = 1, 5 do
      assert.allclose({ r[b][1] + r[b][3], r[b][2] + r[b][4] }, p[b], 1e-6)
    end
  end)

  it("the GEMM path agrees with the direct double loop", function()
    local Kc, D = 40, 50
    local means = diffuse.randn({ Kc, D }, { seed = 7 }):mul(2):add(3)
    local vars = diffuse.rand({ Kc, D }, { seed = 8 }):mul(0.5):add(0.05)
    local w = {}
    for k = 1, Kc do w[k] = k end
    local gm = models.gmm { means = means, vars = vars, weights = w }
    local x = means:narrow(1, 1, 16):add(diffuse.randn({ 16, D }, { seed = 9 }))
    for _, s in ipairs({ 0.3, 1, 4 }) do
      gm._path = 1
      local d1 = gm(x, pt(1, s))
      local l1 = gm:log_prob(x, { point = pt(1, s) })
      gm._path = 2
      local d2 = gm(x, pt(1, s))
      local l2 = gm:log_prob(x, { point = pt(1, s) })
      assert.allclose(d1, d2, 2e-4, 1e-4)
      assert.allclose(l1, l2, 2e-2, 1e-5)
    end
  end)

  it("takes image-shaped x and returns its shape", function()
    local gi = models.gmm { means = { { 0, 0, 0, 0 }, { 1, 1, 1, 1 } }, stds = { 0.5, 0.3 } }
    local x = diffuse.randn({ 3, 1, 2, 2 }, { seed = 10 })
    local out = gi(x, pt(1, 0.5))
    assert.same({ 3, 1, 2, 2 }, out:shape())
    assert.allclose(gi(x:reshape(3, 4), pt(1, 0.5)), out:reshape(3, 4), 0)
    assert.allclose(gi(H.strided(x:reshape(3, 4)), pt(1, 0.5)), out:reshape(3, 4), 0)
  end)

  it("score is grad log p_t (central differences of log_prob)", function()
    local x = diffuse.tensor({ { 0.3, -0.2, 0.8 }, { 1.5, 0.1, -1 } })
    local p = pt(0.9, 0.6)
    local sc = dg:score(x, p):totable()
    local h = 1e-2
    for b = 1, 2 do
      for j = 1, 3 do
        local xp, xm = x:clone(), x:clone()
        xp:set(b, j, x:get(b, j) + h)
        xm:set(b, j, x:get(b, j) - h)
        local fd = (dg:log_prob(xp, { point = p }):get(b) - dg:log_prob(xm, { point = p }):get(b)) / (2 * h)
        assert.is_true(math.abs(fd - sc[b][j]) < 2e-2 * (1 + math.abs(fd)), ("score %d,%d: fd %g, got %g"):format(b, j, fd, sc[b][j]))
      end
    end
  end)

  it("samples the mixture exactly, reproducibly, per class", function()
    local x, comp = dg:sample(20000, { seed = 11 })
    assert.same({ 20000, 3 }, x:shape())
    local mean = { 0, 0, 0 }
    for k = 1, 4 do for j = 1, 3 do mean[j] = mean[j] + dweights[k] * dmeans[k][j] end end
    assert.allclose(mean, x:mean(1), 0.05)
    local counts = { 0, 0, 0, 0 }
    for _, k in ipairs(comp) do counts[k] = counts[k] + 1 end
    for k = 1, 4 do assert.is_true(math.abs(counts[k] / 20000 - dweights[k]) < 0.015) end
    -- per-component spread: rows of component 2 have the component's variances
    local rows = {}
    for i, k in ipairs(comp) do if k == 2 then rows[#rows + 1] = i end end
    assert.allclose(dvars[2], x:gather(rows):var(1), 0, 0.06)
    local again = dg:sample(20000, { seed = 11 })
    assert.allclose(x, again, 0)
    local _, c7 = dg:sample(500, { seed = 12, cond = 7 })
    for _, k in ipairs(c7) do assert.is_true(k == 2 or k == 4) end
    local _, cr = dg:sample(4, { seed = 12, cond = { 3, 7, 3, 7 } })
    assert.is_true((cr[1] == 1 or cr[1] == 3) and (cr[2] == 2 or cr[2] == 4))
  end)

  it("raises clear errors", function()
    local e = H.error_of
    assert.matches("stds has 3 entries", e(models.gmm, { means = { { 0 }, { 1 } }, stds = { 1, 1, 1 } }), 1, true)
    assert.matches("stds[2] must be a positive", e(models.gmm, { means = { { 0 }, { 1 } }, stds = { 1, -1 } }), 1, true)
    assert.matches("vars is [2x2]", e(models.gmm, { means = { { 0 }, { 1 } }, vars = { { 1, 1 }, { 1, 1 } } }), 1, true)
    assert.matches("unknown option 'std'", e(models.gmm, { means = { { 0 } }, std = { 1 } }), 1, true)
    assert.matches("give 'stds'", e(models.gmm, { means = { { 0 } } }), 1, true)
    assert.matches("weights[1] must be >= 0", e(models.gmm, { means = { { 0 } }, stds = { 1 }, weights = { -1 } }), 1, true)
    assert.matches("x is [2x4], expected (N, 3)", e(dg, diffuse.zeros(2, 4), pt(1, 1)), 1, true)
    assert.matches("unknown cond label 5 (labels: 3, 7)", e(dg, diffuse.zeros(2, 3), pt(1, 1), 5), 1, true)
    assert.matches("cond lists 3 labels but x has 2 rows", e(dg, diffuse.zeros(2, 3), pt(1, 1), { 3, 3, 7 }), 1, true)
    assert.matches("has no labels", e(g, diffuse.zeros(2, 2), pt(1, 1), 0), 1, true)
    assert.matches("bad point", e(g, diffuse.zeros(2, 2), pt(0, 0)), 1, true)
    assert.matches("unknown option 'sed'", e(dg.sample, dg, 3, { sed = 1 }), 1, true)
  end)
end)

-- ---- empirical ----

describe("models.empirical", function()
  local data = diffuse.randn({ 20, 5 }, { seed = 20 }):mul(1.3):add(0.4)
  local emp = models.empirical(data)
  local mean = data:mean(1)

  it("matches a brute-force posterior mean", function()
    local x = diffuse.randn({ 6, 5 }, { seed = 21 }):mul(1.5)
    for _, ps in ipairs({ { 1, 0.05 }, { 1, 0.5 }, { 0.7, 0.7 }, { 0.2, 2 }, { 1, 10 } }) do
      local ref = bf_empirical(data:totable(), x:totable(), ps[1], ps[2])
      assert.allclose(ref, emp(x, pt(ps[1], ps[2])), 2e-5, 1e-4)
    end
  end)

  it("tends to the nearest row as sigma -> 0 and to the mean as sigma -> inf", function()
    local x = data:gather({ 3, 17, 8 }):add(diffuse.randn({ 3, 5 }, { seed = 22 }):mul(0.05))
    for _, s in ipairs({ 1e-4, 1e-12, 1e-30, 1e-200, 0 }) do
      local out = emp(x, { t = 0, alpha = 1, sigma = s })
      assert.allclose(data:gather({ 3, 17, 8 }), out, 0)
    end
    for _, s in ipairs({ 1e4, 1e8, 1e30 }) do
      local out = emp(x, pt(1, s))
      for b = 1, 3 do assert.allclose(mean, out[b], 1e-5) end
    end
    local out = emp(x, { t = 1, alpha = 0, sigma = 1 })
    for b = 1, 3 do assert.allclose(mean, out[b], 1e-6) end
  end)

  it("does not depend on the chunk size", function()
    local x = diffuse.randn({ 4, 5 }, { seed = 23 })
    local c7 = models.empirical(data, { chunk = 7 })
    local c1 = models.empirical(data, { chunk = 1 })
    for _, s in ipairs({ 0.01, 0.3, 3 }) do
      assert.allclose(emp(x, pt(1, s)), c7(x, pt(1, s)), 1e-6, 1e-5)
      assert.allclose(emp(x, pt(1, s)), c1(x, pt(1, s)), 1e-6, 1e-5)
    end
  end)

  it("takes non-contiguous and image-shaped inputs", function()
    local x = diffuse.randn({ 4, 5 }, { seed = 24 })
    local strided = models.empirical(H.strided(data))
    assert.allclose(emp(x, pt(1, 0.4)), strided(H.strided(x), pt(1, 0.4)), 1e-6)
    local imgs = diffuse.randn({ 12, 1, 2, 3 }, { seed = 25 })
    local ei = models.empirical(imgs)
    local xi = diffuse.randn({ 2, 1, 2, 3 }, { seed = 26 })
    local out = ei(xi, pt(1, 0.5))
    assert.same({ 2, 1, 2, 3 }, out:shape())
    local ref = bf_empirical(imgs:reshape(12, 6):totable(), xi:reshape(2, 6):totable(), 1, 0.5)
    assert.allclose(ref, out:reshape(2, 6), 2e-5, 1e-4)
  end)

  it("conditions on labels", function()
    local labels = {}
    for i = 1, 20 do labels[i] = i % 3 end
    local el = models.empirical(data, { labels = labels })
    local x = diffuse.randn({ 4, 5 }, { seed = 27 })
    local rows1 = {}
    for i = 1, 20 do if labels[i] == 1 then rows1[#rows1 + 1] = i end end
    local sub = models.empirical(data:gather(rows1))
    assert.allclose(sub(x, pt(1, 0.6)), el(x, pt(1, 0.6), 1), 1e-6)
    local per = el(x, pt(1, 0.6), { 1, 0, 1, 2 })
    assert.allclose(sub(x, pt(1, 0.6))[3], per[3], 1e-6)
    assert.allclose(el(x:narrow(1, 4, 1), pt(1, 0.6), 2)[1], per[4], 1e-6)
    assert.matches("unknown cond label 9", H.error_of(el, x, pt(1, 1), 9), 1, true)
  end)

  it("approaches the Gaussian model for Gaussian data as M grows", function()
    local L = diffuse.tensor({ { 1, 0, 0 }, { 0.5, 0.8, 0 }, { -0.3, 0.2, 0.4 } })
    local big = diffuse.randn({ 40000, 3 }, { seed = 28 }):matmul(L, { transb = true }):add(diffuse.tensor({ 1, -1, 0.5 }))
    local e, gm = models.empirical(big), models.gaussian(big)
    for _, s in ipairs({ 0.5, 1, 3 }) do
      -- typical points x_t = x0 + s eps (far tails have too few data rows nearby)
      local x = diffuse.lincomb({ big:narrow(1, 1, 8), diffuse.randn({ 8, 3 }, { seed = 29 }) }, { 1, s })
      assert.allclose(gm(x, pt(1, s)), e(x, pt(1, s)), 0.03)
    end
  end)

  it("raises clear errors", function()
    assert.matches("x is [2x4], expected (N, 5)", H.error_of(emp, diffuse.zeros(2, 4), pt(1, 1)), 1, true)
    assert.matches("chunk must be a positive integer", H.error_of(models.empirical, data, { chunk = 0 }), 1, true)
    assert.matches("unknown option 'chunks'", H.error_of(models.empirical, data, { chunks = 4 }), 1, true)
    assert.matches("has no labels", H.error_of(emp, diffuse.zeros(2, 5), pt(1, 1), 1), 1, true)
  end)
end)

-- ---- Gaussian ----

describe("models.gaussian", function()
  local mu = { 0.5, -1, 2 }
  local cov = { { 2, 0.3, -0.4 }, { 0.3, 1, 0.2 }, { -0.4, 0.2, 0.5 } }
  local gm = models.gaussian { mean = mu, cov = cov }

  it("matches the closed form computed by brute force (D = 3)", function()
    local x = diffuse.randn({ 4, 3 }, { seed = 30 }):mul(2)
    for _, ps in ipairs({ { 1, 0 }, { 1, 0.3 }, { 0.6, 0.8 }, { 0, 1 } }) do
      local a, s = ps[1], ps[2]
      local A = {}
      for i = 1, 3 do A[i] = {} for j = 1, 3 do A[i][j] = a * a * cov[i][j] + (i == j and s * s or 0) end end
      local refD, refS, refL = {}, {}, {}
      for b, row in ipairs(x:totable()) do
        local y = {}
        for j = 1, 3 do y[j] = row[j] - a * mu[j] end
        local z = solve(A, y)
        local dd, sc, q = {}, {}, 0
        for i = 1, 3 do
          dd[i] = mu[i]
          for j = 1, 3 do dd[i] = dd[i] + a * cov[i][j] * z[j] end
          sc[i] = -z[i]
          q = q + y[i] * z[i]
        end
        refD[b], refS[b], refL[b] = dd, sc, -0.5 * (q + math.log(det(A)) + 3 * math.log(2 * math.pi))
      end
      assert.allclose(refD, gm(x, pt(a, s)), 2e-5, 1e-4)
      assert.allclose(refS, gm:score(x, pt(a, s)), 2e-5, 1e-4)
      assert.allclose(refL, gm:log_prob(x, { point = pt(a, s) }), 1e-4, 1e-5)
    end
  end)

  it("estimates mean and covariance (1/M) from data", function()
    local data = diffuse.randn({ 50, 3 }, { seed = 31 }):add(diffuse.tensor({ 1, 2, 3 }))
    local g2 = models.gaussian(data)
    local rows = data:totable()
    local m, c = { 0, 0, 0 }, { { 0, 0, 0 }, { 0, 0, 0 }, { 0, 0, 0 } }
    for _, r in ipairs(rows) do for j = 1, 3 do m[j] = m[j] + r[j] / 50 end end
    for _, r in ipairs(rows) do
      for i = 1, 3 do for j = 1, 3 do c[i][j] = c[i][j] + (r[i] - m[i]) * (r[j] - m[j]) / 50 end end
    end
    assert.allclose(m, g2.mean, 1e-6)
    assert.allclose(c, g2.cov, 1e-5)
    local s = g2:sample(20000, { seed = 32 })
    assert.allclose(m, s:mean(1), 0.03)
  end)

  it("raises clear errors", function()
    assert.matches("cov is [2x2]", H.error_of(models.gaussian, { mean = mu, cov = { { 1, 0 }, { 0, 1 } } }), 1, true)
    assert.matches("not positive semi-definite", H.error_of(models.gaussian, { mean = { 0, 0 }, cov = { { 1, 0 }, { 0, -1 } } }), 1, true)
    assert.matches("x is [1x2], expected (N, 3)", H.error_of(gm, diffuse.zeros(1, 2), pt(1, 1)), 1, true)
    assert.matches("unknown option 'covariance'", H.error_of(models.gaussian, { mean = mu, covariance = cov }), 1, true)
  end)
end)

-- ---- conversions and user functions ----

describe("models.convert", function()
  local x = diffuse.randn({ 5, 3 }, { seed = 40 })
  local out = diffuse.randn({ 5, 3 }, { seed = 41 })
  local p = { t = 0.4, alpha = 0.8, sigma = 0.6, dalpha = -0.9, dsigma = 1.1 }

  it("round-trips between every pair of kinds", function()
    for _, from in ipairs(models.kinds) do
      for _, to in ipairs(models.kinds) do
        local y = models.convert(out, from, to, x, p)
        local back = models.convert(y, to, from, x, p)
        assert.allclose(out, back, 2e-5, 1e-5)
      end
    end
  end)

  it("agrees with the definitions", function()
    local x0 = out
    local eps = diffuse.lincomb({ x, x0 }, { 1 / 0.6, -0.8 / 0.6 })
    assert.allclose(eps, models.convert(x0, "x0", "eps", x, p), 1e-5)
    assert.allclose(diffuse.lincomb({ eps, x0 }, { 0.8, -0.6 }), models.convert(x0, "x0", "v", x, p), 1e-5)
    assert.allclose(eps:mul(-1 / 0.6), models.convert(x0, "x0", "score", x, p), 1e-5)
    assert.allclose(diffuse.lincomb({ x0, eps }, { -0.9, 1.1 }), models.convert(x0, "x0", "flow", x, p), 1e-5)
  end)

  it("the gmm's score equals its x0 prediction converted", function()
    local g = models.gmm { means = { { 0, 0, 0 }, { 1, 2, 3 } }, stds = { 0.5, 1 } }
    assert.allclose(models.convert(g(x, p), "x0", "score", x, p), g:score(x, p), 1e-5)
  end)

  it("raises clear errors", function()
    assert.matches("unknown prediction kind 'noise'", H.error_of(models.convert, out, "noise", "x0", x, p), 1, true)
    assert.matches("needs the schedule's derivatives",
      H.error_of(models.convert, out, "x0", "flow", x, { alpha = 1, sigma = 0.5 }), 1, true)
    assert.matches("at sigma = 0", H.error_of(models.convert, out, "x0", "eps", x, { t = 0, alpha = 1, sigma = 0 }), 1, true)
  end)
end)

describe("models.fn", function()
  it("wraps a Lua function with a declaration", function()
    local m = models.fn(function(x, p) return x:mul(p.sigma) end, { predicts = "eps" })
    assert.equal("eps", m.predicts)
    assert.allclose(diffuse.full({ 2, 2 }, 0.5), m(diffuse.ones(2, 2), pt(1, 0.5)), 0)
    assert.matches("say what f predicts", H.error_of(models.fn, function() end), 1, true)
    assert.matches("unknown prediction kind 'eta'", H.error_of(models.fn, function() end, { predicts = "eta" }), 1, true)
    assert.matches("f must be a function", H.error_of(models.fn, 3, { predicts = "eps" }), 1, true)
  end)

  it("models.as converts a model's output per call", function()
    local g = models.gmm { means = { { 0, 0 }, { 2, 1 } }, stds = { 0.5, 0.8 } }
    local ge = models.as(g, "eps")
    local x, p = diffuse.randn({ 3, 2 }, { seed = 42 }), pt(0.9, 0.4)
    assert.equal("eps", ge.predicts)
    assert.allclose(models.convert(g(x, p), "x0", "eps", x, p), ge(x, p), 0)
  end)
end)
