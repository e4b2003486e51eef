-- diffuse.metrics: every metric against a closed form or an independent brute-force computation
-- in plain Lua doubles.
local H = require("helper")
local diffuse = require("diffuse")
local core = require("diffuse.core")
local metrics = diffuse.metrics
local K = core._metrics

-- ---- small helpers in Lua doubles ----

local function rows(t) return t:totable() end

local function sqdist(a, b)
  local s = 0
  for j = 1, #a do s = s + (a[j] - b[j]) ^ 2 end
  return s
end

local function dot(a, b)
  local s = 0
  for j = 1, #a do s = s + a[j] * b[j] end
  return s
end

local function matmul(A, B)
  local n, m, p = #A, #B, #B[1]
  local C = {}
  for i = 1, n do
    C[i] = {}
    for j = 1, p do
      local s = 0
      for k = 1, m do s = s + A[i][k] * B[k][j] end
      C[i][j] = s
    end
  end
  return C
end

local function transpose(A)
  local T = {}
  for i = 1, #A[1] do
    T[i] = {}
    for j = 1, #A do T[i][j] = A[j][i] end
  end
  return T
end

-- A random orthogonal matrix (Gram-Schmidt of seeded normals).
local function orthogonal(d, seed)
  local g = rows(diffuse.randn({ d, d }, { seed = seed }))
  local q = {}
  for i = 1, d do
    local v = g[i]
    for k = 1, i - 1 do
      local c = dot(v, q[k])
      for j = 1, d do v[j] = v[j] - c * q[k][j] end
    end
    local n = math.sqrt(dot(v, v))
    for j = 1, d do v[j] = v[j] / n end
    q[i] = v
  end
  return q
end

local function f64_list(buf)
  local out = {}
  for i = 1, #buf do out[i] = K.f64_get(buf, i) end
  return out
end

-- Mean and unbiased covariance in Lua doubles.
local function bf_stats(x)
  local n, d = #x, #x[1]
  local mu = {}
  for j = 1, d do
    local s = 0
    for i = 1, n do s = s + x[i][j] end
    mu[j] = s / n
  end
  local cov = {}
  for a = 1, d do
    cov[a] = {}
    for b = 1, d do
      local s = 0
      for i = 1, n do s = s + (x[i][a] - mu[a]) * (x[i][b] - mu[b]) end
      cov[a][b] = s / (n - 1)
    end
  end
  return mu, cov
end

-- Unbiased MMD^2 with kernel k over Lua row lists.
local function bf_mmd2(X, Y, k)
  local m, n = #X, #Y
  local sxx, syy, sxy = 0, 0, 0
  for i = 1, m do for j = 1, m do if i ~= j then sxx = sxx + k(X[i], X[j]) end end end
  for i = 1, n do for j = 1, n do if i ~= j then syy = syy + k(Y[i], Y[j]) end end end
  for i = 1, m do for j = 1, n do sxy = sxy + k(X[i], Y[j]) end end
  return sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2 * sxy / (m * n)
end

-- The KID subset choice recomputed from the Philox definition in docs/metrics.md.
local function bf_subset(n, m, seed, s, w)
  local perm = {}
  for i = 1, n do perm[i] = i end
  local key = { seed & 0xffffffff, (seed >> 32) & 0xffffffff }
  for j = 0, m - 1 do
    local o1, o2 = core._philox({ j, s, w, 0 }, key)
    local r = n - j
    local two32 = (1 << 32) % r
    local off = ((o1 % r) * two32 + o2) % r -- (o1 * 2^32 + o2) mod r, exactly
    local a, b = j + 1, j + 1 + off
    perm[a], perm[b] = perm[b], perm[a]
  end
  local out = {}
  for i = 1, m do out[i] = perm[i] end
  return out
end

-- Precision, recall, density, coverage by brute force (Naeem et al. 2020: strict <, or <=),
-- on squared distances in Lua doubles.
local function bf_prdc(R, F, k, inclusive)
  local function lt(a, b) if inclusive then return a <= b end return a < b end
  local function radii(X)
    local r = {}
    for i = 1, #X do
      local ds = {}
      for j = 1, #X do if j ~= i then ds[#ds + 1] = sqdist(X[i], X[j]) end end
      table.sort(ds)
      r[i] = ds[k]
    end
    return r
  end
  local rr, fr = radii(R), radii(F)
  local prec, dens, rec, cov = 0, 0, 0, 0
  for j = 1, #F do
    local c = 0
    for i = 1, #R do if lt(sqdist(R[i], F[j]), rr[i]) then c = c + 1 end end
    if c > 0 then prec = prec + 1 end
    dens = dens + c
  end
  for i = 1, #R do
    local inside, mind = false, math.huge
    for j = 1, #F do
      local dd = sqdist(R[i], F[j])
      if lt(dd, fr[j]) then inside = true end
      mind = math.min(mind, dd)
    end
    if inside then rec = rec + 1 end
    if lt(mind, rr[i]) then cov = cov + 1 end
  end
  return { precision = prec / #F, recall = rec / #R, density = dens / (k * #F), coverage = cov / #R }
end

local function close(a, b, tol) return math.abs(a - b) <= tol end

describe("metrics.stats", function()
  it("matches a Lua double computation, also with a large common offset", function()
    local x = diffuse.randn({ 57, 5 }, { seed = 3 }):mul(2):add(1000)
    local s = metrics.stats(x)
    local mu, cov = bf_stats(rows(x))
    assert.equal(57, s.n)
    assert.equal(5, s.d)
    local mu64, cov64 = f64_list(s.mu64), f64_list(s.sigma64)
    for j = 1, 5 do assert.is_true(close(mu[j], mu64[j], 1e-10), "mu " .. j) end
    for a = 1, 5 do
      for b = 1, 5 do
        assert.is_true(close(cov[a][b], cov64[(a - 1) * 5 + b], 1e-11), ("cov %d %d"):format(a, b))
      end
    end
    -- the float32 copies are the doubles rounded
    assert.allclose(mu, s.mu, 0, 1e-7)
    assert.allclose(cov, s.sigma, 1e-7, 1e-6)
  end)

  it("covers more than one row block (256 rows) and strided row views", function()
    local big = diffuse.randn({ 600, 9 }, { seed = 4 })
    local x = big:narrow(2, 2, 7) -- rows with stride 9
    local s = metrics.stats(x)
    local mu, cov = bf_stats(rows(x))
    local cov64 = f64_list(s.sigma64)
    for a = 1, 7 do
      for b = 1, 7 do assert.is_true(close(cov[a][b], cov64[(a - 1) * 7 + b], 1e-12)) end
    end
    assert.allclose(mu, s.mu, 1e-7, 1e-6)
  end)

  it("has a double P Q^T kernel that matches Lua (odd sizes, symmetric case)", function()
    local P = rows(diffuse.randn({ 37, 11 }, { seed = 5 }))
    local Q = rows(diffuse.randn({ 70, 11 }, { seed = 6 }))
    local function flat(A)
      local f = {}
      for i = 1, #A do for j = 1, #A[i] do f[#f + 1] = A[i][j] end end
      return f
    end
    local C = f64_list(K.dgemm_nt(K.f64_from_table(flat(P)), K.f64_from_table(flat(Q)), 37, 70, 11))
    local E = flat(matmul(P, transpose(Q)))
    for i = 1, #E do assert.is_true(close(E[i], C[i], 1e-12)) end
    local S = f64_list(K.dgemm_nt(K.f64_from_table(flat(Q)), K.f64_from_table(flat(Q)), 70, 70, 11, true))
    local ES = flat(matmul(Q, transpose(Q)))
    for i = 1, #ES do assert.is_true(close(ES[i], S[i], 1e-12)) end
  end)

  it("rejects misuse", function()
    assert.matches("features must be a 2%-d", H.error_of(metrics.stats, diffuse.zeros(3)))
    assert.matches("at least 2 rows", H.error_of(metrics.stats, diffuse.zeros(1, 3)))
  end)
end)

describe("metrics.frechet_distance", function()
  it("is |dmu|^2 + (s1 - s2)^2 in 1-D", function()
    -- N(1, 2^2) and N(3, 3^2): 4 + 1 = 5
    local fd = metrics.frechet_distance({ mu = { 1 }, sigma = { { 4 } } }, { mu = { 3 }, sigma = { { 9 } } })
    assert.is_true(close(fd, 5, 1e-12))
  end)

  it("matches the closed form for diagonal covariances", function()
    local a, b = { 0.5, 2, 1e-3, 7 }, { 1.5, 0.25, 4, 7 }
    local m1, m2 = { 0, 1, -2, 3 }, { 0.5, 1, 0, -1 }
    local S1, S2 = {}, {}
    local expected = 0
    for i = 1, 4 do
      S1[i], S2[i] = { 0, 0, 0, 0 }, { 0, 0, 0, 0 }
      S1[i][i], S2[i][i] = a[i], b[i]
      expected = expected + (m1[i] - m2[i]) ^ 2 + (math.sqrt(a[i]) - math.sqrt(b[i])) ^ 2
    end
    local fd, info = metrics.frechet_distance({ mu = m1, sigma = S1 }, { mu = m2, sigma = S2 })
    assert.is_true(close(fd, expected, 1e-11), ("%.17g vs %.17g"):format(fd, expected))
    assert.is_nil(info.warning)
    assert.is_true(close(info.mean_term, 0.25 + 4 + 16, 1e-12))
  end)

  it("matches the 2x2 closed form for non-commuting full covariances, rotated into 6-D", function()
    -- For 2x2 PSD M: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)); here M ~ S1 S2.
    local blocks1 = { { { 2, 0.7 }, { 0.7, 1 } }, { { 1, -0.3 }, { -0.3, 0.5 } }, { { 3, 1.2 }, { 1.2, 0.9 } } }
    local blocks2 = { { { 1, -0.4 }, { -0.4, 2 } }, { { 0.2, 0.1 }, { 0.1, 4 } }, { { 3, 1.2 }, { 1.2, 0.9 } } }
    local expected = 0
    local B1, B2 = {}, {}
    for i = 1, 6 do B1[i], B2[i] = { 0, 0, 0, 0, 0, 0 }, { 0, 0, 0, 0, 0, 0 } end
    for b = 1, 3 do
      local s1, s2 = blocks1[b], blocks2[b]
      local p = matmul(s1, s2)
      local det = (s1[1][1] * s1[2][2] - s1[1][2] ^ 2) * (s2[1][1] * s2[2][2] - s2[1][2] ^ 2)
      local cross = math.sqrt(p[1][1] + p[2][2] + 2 * math.sqrt(det))
      expected = expected + s1[1][1] + s1[2][2] + s2[1][1] + s2[2][2] - 2 * cross
      for i = 1, 2 do
        for j = 1, 2 do
          B1[2 * b - 2 + i][2 * b - 2 + j] = s1[i][j]
          B2[2 * b - 2 + i][2 * b - 2 + j] = s2[i][j]
        end
      end
    end
    local mu1, mu2 = { 1, 2, 3, 4, 5, 6 }, { 1, 2, 3, 4, 5, 4 }
    expected = expected + 4
    -- a common rotation leaves the distance unchanged (and makes both matrices full)
    local Q = orthogonal(6, 11)
    local S1 = matmul(matmul(Q, B1), transpose(Q))
    local S2 = matmul(matmul(Q, B2), transpose(Q))
    local function rot(v)
      local out = {}
      for i = 1, 6 do out[i] = dot(Q[i], v) end
      return out
    end
    local a = { mu = rot(mu1), sigma = S1 }
    local b = { mu = rot(mu2), sigma = S2 }
    local fd = metrics.frechet_distance(a, b)
    assert.is_true(close(fd, expected, 1e-10), ("%.17g vs %.17g"):format(fd, expected))
    -- symmetric, and 0 against itself
    assert.is_true(close(metrics.frechet_distance(b, a), fd, 1e-10))
    assert.is_true(close(metrics.frechet_distance(a, a), 0, 1e-12))
    -- the block with identical covariances contributes 0: scaling S2 = c^2 S1 gives (1 - c)^2 tr S1
    local S3 = {}
    for i = 1, 6 do
      S3[i] = {}
      for j = 1, 6 do S3[i][j] = 2.25 * S1[i][j] end
    end
    local tr = 0
    for i = 1, 6 do tr = tr + S1[i][i] end
    local fd3 = metrics.frechet_distance({ mu = mu1, sigma = S1 }, { mu = mu1, sigma = S3 })
    assert.is_true(close(fd3, 0.25 * tr, 1e-10))
  end)

  it("computes the same from features as from their stats, ~0 for a set with itself", function()
    local x = diffuse.randn({ 300, 8 }, { seed = 1 })
    local y = diffuse.randn({ 200, 8 }, { seed = 2 }):mul(1.5):add(0.3)
    local fd1 = metrics.frechet_distance(x, y)
    local fd2 = metrics.frechet_distance(metrics.stats(x), metrics.stats(y))
    assert.equal(fd1, fd2)
    local fd0, info = metrics.frechet_distance(x, x)
    assert.is_true(math.abs(fd0) < 1e-11 * info.trace1)
    -- population value 8 * 0.09 + 8 * (1 - 1.5)^2 = 2.72; finite samples add a positive bias
    assert.is_true(fd1 > 2.3 and fd1 < 5, tostring(fd1))
  end)

  it("handles singular covariances (N < D) quietly and reports an invalid one", function()
    local x = diffuse.randn({ 5, 10 }, { seed = 7 })
    local y = diffuse.randn({ 6, 10 }, { seed = 8 })
    local fd, info = metrics.frechet_distance(x, y)
    assert.is_true(fd > 0)
    assert.is_nil(info.warning)
    -- same stats: 0 even though S is singular (its square root is taken by eigenvalues)
    assert.is_true(math.abs(metrics.frechet_distance(x, x)) < 1e-10)
    local _, bad = metrics.frechet_distance({ mu = { 0, 0 }, sigma = { { 1, 0 }, { 0, -0.5 } } },
      { mu = { 0, 0 }, sigma = { { 1, 0 }, { 0, 1 } } })
    assert.matches("negative eigenvalue", bad.warning)
    assert.equal(1, bad.clamped1)
  end)

  it("rejects mismatched or malformed arguments", function()
    local e = H.error_of(metrics.frechet_distance, diffuse.zeros(4, 3), diffuse.zeros(4, 2))
    assert.matches("feature sizes differ", e)
    e = H.error_of(metrics.frechet_distance, { mu = { 1, 2 }, sigma = diffuse.zeros(3, 3) }, diffuse.zeros(4, 2))
    assert.matches("a.sigma must be a %(2, 2%)", e)
    e = H.error_of(metrics.frechet_distance, "x", diffuse.zeros(4, 2))
    assert.matches("a must be stats", e)
  end)
end)

describe("metrics.kid", function()
  local poly = function(d) return function(a, b) return (dot(a, b) / d + 1) ^ 3 end end

  it("equals the unbiased MMD^2 of the whole sets when subset_size is the set size", function()
    local x = diffuse.randn({ 20, 6 }, { seed = 1 })
    local y = diffuse.randn({ 20, 6 }, { seed = 2 }):add(0.5)
    local mean, std, values = metrics.kid(x, y, { subsets = 3, subset_size = 20 })
    local expected = bf_mmd2(rows(x), rows(y), poly(6))
    -- x.y comes from sgemm in float32: kernel values carry ~1e-7 relative error
    for i = 1, 3 do assert.is_true(close(values[i], expected, 1e-6 * math.abs(expected) + 1e-7)) end
    assert.is_true(close(mean, expected, 1e-6 * math.abs(expected) + 1e-7))
    assert.is_true(std < 1e-12) -- every subset is the whole set
  end)

  it("matches a direct Lua computation on the documented random subsets", function()
    local x = diffuse.randn({ 31, 5 }, { seed = 3 })
    local y = diffuse.randn({ 25, 5 }, { seed = 4 }):mul(1.3)
    local X, Y = rows(x), rows(y)
    local seed = 12345678901
    local mean, std, values = metrics.kid(x, y, { subsets = 4, subset_size = 9, seed = seed })
    local vs, s1, s2 = {}, 0, 0
    for s = 0, 3 do
      local ix, iy = bf_subset(31, 9, seed, s, 0), bf_subset(25, 9, seed, s, 1)
      local XS, YS = {}, {}
      for i = 1, 9 do XS[i], YS[i] = X[ix[i]], Y[iy[i]] end
      vs[s + 1] = bf_mmd2(XS, YS, poly(5))
      assert.is_true(close(values[s + 1], vs[s + 1], 1e-6 * math.abs(vs[s + 1]) + 1e-7),
        ("subset %d: %.12g vs %.12g"):format(s, values[s + 1], vs[s + 1]))
      s1 = s1 + vs[s + 1]
    end
    s1 = s1 / 4
    for i = 1, 4 do s2 = s2 + (vs[i] - s1) ^ 2 end
    assert.is_true(close(mean, s1, 1e-6 * math.abs(s1) + 1e-7))
    assert.is_true(close(std, math.sqrt(s2 / 4), 1e-6))
    -- the subsets differ from one another, and another seed gives other subsets
    assert.is_true(std > 0)
    local _, _, other = metrics.kid(x, y, { subsets = 4, subset_size = 9, seed = 1 })
    assert.is_true(other[1] ~= values[1])
  end)

  it("is about 0 for two samples of one distribution and clearly positive otherwise", function()
    local x = diffuse.randn({ 1500, 16 }, { seed = 21 })
    local y = diffuse.randn({ 1500, 16 }, { seed = 22 })
    local z = diffuse.randn({ 1500, 16 }, { seed = 23 }):mul(1.2):add(0.2)
    local m0, s0 = metrics.kid(x, y, { subsets = 20, subset_size = 500 })
    local m1 = metrics.kid(x, z, { subsets = 20, subset_size = 500 })
    assert.is_true(math.abs(m0) < 3 * s0 + 1e-3, ("%g +- %g"):format(m0, s0))
    assert.is_true(m1 > 20 * math.max(math.abs(m0), s0), ("%g vs %g"):format(m1, m0))
  end)

  it("rejects bad options", function()
    local x = diffuse.randn({ 10, 3 })
    assert.matches("unknown option 'subset' %(valid: coef0, degree, gamma, seed, subset_size, subsets%)",
      H.error_of(metrics.kid, x, x, { subset = 5 }))
    assert.matches("subset_size 1000 exceeds", H.error_of(metrics.kid, x, x))
    assert.matches("feature sizes differ", H.error_of(metrics.kid, x, diffuse.zeros(10, 2), { subset_size = 5 }))
  end)
end)

describe("metrics.mmd", function()
  it("matches a Lua computation with a given bandwidth, chunked or not", function()
    local x = diffuse.randn({ 23, 4 }, { seed = 1 })
    local y = diffuse.randn({ 17, 4 }, { seed = 2 }):add(0.4)
    local h = 1.7
    local expected = bf_mmd2(rows(x), rows(y), function(a, b) return math.exp(-sqdist(a, b) / (2 * h * h)) end)
    local v, info = metrics.mmd(x, y, { bandwidth = h })
    assert.is_true(close(v, expected, 1e-7), ("%.10g vs %.10g"):format(v, expected))
    assert.equal(h, info.bandwidth)
    local vc = metrics.mmd(x, y, { bandwidth = h, chunk = 4 })
    assert.is_true(close(vc, expected, 1e-7))
  end)

  it("uses the median pairwise distance of the pooled sample by default", function()
    local x = diffuse.randn({ 12, 3 }, { seed = 5 })
    local y = diffuse.randn({ 9, 3 }, { seed = 6 }):mul(2)
    local P = rows(x)
    for _, r in ipairs(rows(y)) do P[#P + 1] = r end
    local ds = {}
    for i = 1, #P do for j = i + 1, #P do ds[#ds + 1] = math.sqrt(sqdist(P[i], P[j])) end end
    table.sort(ds)
    local n = #ds -- 210: even
    local med = 0.5 * (ds[n // 2] + ds[n // 2 + 1])
    local v, info = metrics.mmd(x, y)
    assert.is_true(close(info.bandwidth, med, 1e-6 * med))
    local expected = bf_mmd2(rows(x), rows(y), function(a, b) return math.exp(-sqdist(a, b) / (2 * med * med)) end)
    assert.is_true(close(v, expected, 1e-7))
  end)

  it("subsamples the pooled set for the median when it is large", function()
    local x = diffuse.randn({ 700, 3 }, { seed = 1 })
    local y = diffuse.randn({ 700, 3 }, { seed = 2 })
    local v, info = metrics.mmd(x, y, { median_rows = 200 })
    -- the median distance between standard normals in 3-D is about sqrt(2) * 1.54
    assert.is_true(info.bandwidth > 1.8 and info.bandwidth < 2.6, tostring(info.bandwidth))
    assert.is_true(math.abs(v) < 0.01)
    assert.matches("bandwidth must be", H.error_of(metrics.mmd, x, y, { bandwidth = -1 }))
  end)
end)

describe("metrics.prdc", function()
  it("matches a brute-force Lua implementation (also chunked)", function()
    local r = diffuse.randn({ 40, 3 }, { seed = 31 })
    local f = diffuse.randn({ 50, 3 }, { seed = 32 }):mul(1.3):add(0.4)
    local expected = bf_prdc(rows(r), rows(f), 3)
    local got = metrics.prdc(r, f, { k = 3 })
    assert.allclose({ expected.precision, expected.recall, expected.density, expected.coverage },
      { got.precision, got.recall, got.density, got.coverage }, 1e-12)
    local chunked = metrics.prdc(r, f, { k = 3, chunk = 7 })
    assert.same(got, chunked)
    -- the metrics are not trivially 0 or 1 here
    assert.is_true(got.precision > 0.2 and got.precision < 1 and got.coverage > 0.2 and got.coverage < 1)
  end)

  it("gives precision = recall = coverage = density = 1 for identical sets", function()
    -- density is exactly 1: each real ball holds its centre and the k - 1 nearer neighbours
    -- (the k-th sits on the boundary); near-ties are decided on exact double distances.
    local r = diffuse.randn({ 1500, 64 }, { seed = 33 })
    local got = metrics.prdc(r, r:clone(), { k = 5 })
    assert.same({ precision = 1, recall = 1, density = 1, coverage = 1 }, got)
  end)

  it("decides exact ties (points on a grid) like the brute force, strict or inclusive", function()
    local function grid(n, seed)
      local u = rows(diffuse.rand({ n, 2 }, { seed = seed }))
      for i = 1, n do for j = 1, 2 do u[i][j] = math.floor(5 * u[i][j]) end end
      return diffuse.tensor(u)
    end
    local r, f = grid(60, 1), grid(45, 2)
    for _, inclusive in ipairs({ false, true }) do
      local expected = bf_prdc(rows(r), rows(f), 4, inclusive)
      local got = metrics.prdc(r, f, { k = 4, inclusive = inclusive, chunk = 16 })
      assert.allclose({ expected.precision, expected.recall, expected.density, expected.coverage },
        { got.precision, got.recall, got.density, got.coverage }, 1e-12)
    end
    -- with many duplicates the radii are 0: strict balls are empty, inclusive ones are not
    local strict = metrics.prdc(r, r, { k = 4 })
    local incl = metrics.prdc(r, r, { k = 4, inclusive = true })
    assert.is_true(strict.precision < 1 and incl.precision == 1)
  end)

  it("is low for far-apart sets", function()
    local r = diffuse.randn({ 100, 4 }, { seed = 34 })
    local f = diffuse.randn({ 100, 4 }, { seed = 35 }):add(10)
    local got = metrics.prdc(r, f)
    assert.same({ precision = 0, recall = 0, density = 0, coverage = 0 }, got)
  end)

  it("rejects bad arguments", function()
    local r = diffuse.randn({ 5, 2 })
    assert.matches("more than k = 5 rows", H.error_of(metrics.prdc, r, r))
    assert.matches("unknown option 'nearest_k'", H.error_of(metrics.prdc, r, r, { nearest_k = 2 }))
  end)
end)

describe("metrics.class_accuracy", function()
  it("takes logits (column c is class c - 1) or predicted labels", function()
    local logits = diffuse.tensor({ { 5, 1, 0 }, { 0, 2, 1 }, { 0, 0, 3 }, { 9, 0, 0 } })
    local acc, info = metrics.class_accuracy(logits, { 0, 1, 1, 0 })
    assert.equal(0.75, acc)
    assert.equal(3, info.correct)
    assert.equal(1, info.per_class[0])
    assert.equal(0.5, info.per_class[1])
    assert.equal(1.0, metrics.class_accuracy({ 2, 0 }, diffuse.tensor({ 2, 0 })))
    assert.equal(0.5, metrics.class_accuracy(diffuse.tensor({ 2, 1 }), { 2, 0 }))
    assert.matches("3 predictions but 2 labels", H.error_of(metrics.class_accuracy, { 1, 2, 3 }, { 1, 2 }))
  end)
end)

describe("metrics for exact models", function()
  it("ode_error gives rms, max and relative error", function()
    local e = metrics.ode_error(diffuse.tensor({ { 1, 2 }, { 3, 4 } }), diffuse.tensor({ { 1, 2 }, { 3, 2 } }))
    assert.is_true(close(e.rms, 1, 1e-12))
    assert.equal(2, e.max)
    assert.is_true(close(e.rel, 1 / math.sqrt(4.5), 1e-7))
    assert.matches("size mismatch", H.error_of(metrics.ode_error, diffuse.zeros(2), diffuse.zeros(3)))
  end)

  it("log_likelihood is the mean of the mixture's log-density", function()
    local g = diffuse.models.gmm({ means = { { 0 }, { 4 } }, stds = { 1, 1 }, weights = { 0.5, 0.5 } })
    local x = diffuse.tensor({ { 0 }, { 1 }, { 4 } })
    local function lp(v)
      return math.log(0.5 * math.exp(-0.5 * v * v) + 0.5 * math.exp(-0.5 * (v - 4) ^ 2)) - 0.5 * math.log(2 * math.pi)
    end
    local mean, per = metrics.log_likelihood(g, x)
    assert.is_true(close(mean, (lp(0) + lp(1) + lp(4)) / 3, 1e-6))
    assert.equal(3, per:numel())
    assert.matches("log_prob", H.error_of(metrics.log_likelihood, {}, x))
  end)
end)

describe("metrics.reference_stats and floor", function()
  it("computes once, then loads the cache; a new version recomputes", function()
    local dir = H.tmpdir() .. "/sub/cache"
    local calls = 0
    local function feature_fn(batch)
      calls = calls + 1
      return batch:mul(2)
    end
    local data = diffuse.randn({ 130, 6 }, { seed = 9 }):add(100)
    local s1 = metrics.reference_stats("toy", feature_fn, function() return data end, { dir = dir, batch = 50 })
    assert.is_false(s1.cached)
    assert.equal(3, calls)
    assert.is_true(H.exists(dir .. "/toy.stats.safetensors"))
    local s2 = metrics.reference_stats("toy", feature_fn, function() error("must not be called") end, { dir = dir })
    assert.is_true(s2.cached)
    assert.equal(3, calls)
    assert.equal(130, s2.n)
    -- hi + lo storage keeps the doubles to about 48 bits (an offset of 200 in the features)
    local a, b = f64_list(s1.sigma64), f64_list(s2.sigma64)
    for i = 1, #a do assert.is_true(close(a[i], b[i], 1e-13 * (math.abs(a[i]) + 1))) end
    local ma, mb = f64_list(s1.mu64), f64_list(s2.mu64)
    for i = 1, #ma do assert.is_true(close(ma[i], mb[i], 1e-11)) end
    assert.equal(s1.mu64 and #s1.mu64, #s2.mu64)
    assert.is_true(math.abs(metrics.frechet_distance(s1, s2)) < 1e-9)
    -- direct stats of the features agree
    assert.is_true(math.abs(metrics.frechet_distance(s1, data:mul(2))) < 1e-9)
    local s3 = metrics.reference_stats("toy", feature_fn, function() return data end, { dir = dir, version = "2" })
    assert.is_false(s3.cached)
    assert.equal(4, calls) -- one batch of the default 500 rows
    assert.is_true(metrics.reference_stats("toy", feature_fn, data, { dir = dir, version = "2" }).cached)
    -- a corrupt cache file is recomputed
    H.spit(dir .. "/toy.stats.safetensors", "garbage")
    local s4 = metrics.reference_stats("toy", feature_fn, data, { dir = dir, version = "2" })
    assert.is_false(s4.cached)
    assert.is_true(metrics.reference_stats("toy", feature_fn, data, { dir = dir, version = "2" }).cached)
    assert.matches("name must be", H.error_of(metrics.reference_stats, "a/b", feature_fn, data, { dir = dir }))
    assert.matches("unknown option 'cache'", H.error_of(metrics.reference_stats, "toy", feature_fn, data, { cache = dir }))
  end)

  it("floor is the FD between two random halves", function()
    local x = diffuse.randn({ 400, 4 }, { seed = 12 })
    local fd, info = metrics.floor(nil, x, { seed = 3 })
    assert.equal(200, info.n1)
    assert.is_true(fd > 0 and fd < 0.3, tostring(fd))
    assert.equal(fd, metrics.floor(function(b) return b end, x, { seed = 3, batch = 64 }))
    assert.is_true(fd ~= metrics.floor(nil, x, { seed = 4 }))
  end)
end)
