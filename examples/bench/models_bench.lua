-- Speed of the exact models.  The headline is the empirical-data denoiser on Fashion-MNIST
-- (60000 x 784, batch 64): ms per call and GFLOP/s (two GEMMs of 2*N*M*D flops each), next to
-- the bound of the same two sgemm calls alone, measured in the same run; then the chunk-size
-- sweep, the Gaussian mixture and the Gaussian model.  The machine may be shared: every figure
-- is the best of several calls.
--   make bench     or    LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/?.so;;' lua5.4 examples/bench/models_bench.lua
local diffuse = require("diffuse")
local models = diffuse.models

local REPS = tonumber(os.getenv("BENCH_REPS")) or 7

local function best_time(f)
  f()
  local best = math.huge
  for _ = 1, REPS do
    local t0 = diffuse.wtime()
    f()
    best = math.min(best, diffuse.wtime() - t0)
  end
  return best
end

local info = diffuse.blas_info()
print(("OpenBLAS core %s, %d threads"):format(tostring(info.core), info.threads))

-- ---- empirical denoiser on Fashion-MNIST ----
local fm, err = diffuse.data.fashion_mnist {}
local data
if fm then
  data = fm.images
  print(("Fashion-MNIST train: %s"):format(table.concat(data:shape(), "x")))
else
  print(err .. "; using 60000 random rows instead")
  data = diffuse.rand({ 60000, 1, 28, 28 }, { seed = 1 }):mul(2):sub(1)
end
local t0 = diffuse.wtime()
local emp = models.empirical(data)
print(("empirical: built in %.1f ms (row norms)"):format((diffuse.wtime() - t0) * 1e3))
local M, D, N = emp.M, emp.D, 64
local x = diffuse.lincomb({ data:narrow(1, 1, N), diffuse.randn({ N, 1, 28, 28 }, { seed = 2 }) }, { 1, 1 })
local flops = 2 * (2 * N * M * D)

-- the bound: the two sgemm calls alone, whole data set at once
local flat = emp.data
local G, out = diffuse.zeros(N, M), diffuse.zeros(N, D)
local xf = x:reshape(N, D)
local tg = best_time(function()
  xf:matmul(flat, { transb = true, out = G })
  G:matmul(flat, { out = out })
end)
print(("  sgemm bound (x.D^T, W.D):        %7.1f ms  %6.1f GFLOP/s"):format(tg * 1e3, flops / tg * 1e-9))

for _, s in ipairs({ 1, 0.05 }) do
  local p = { t = 0.5, alpha = 1, sigma = s }
  local tm = best_time(function() emp(x, p) end)
  local y = emp(x, p)
  local sum = y:sum()
  assert(sum == sum, "non-finite output")
  print(("  empirical N=%d sigma=%-5g (auto chunk) %7.1f ms  %6.1f GFLOP/s  (%.2fx the sgemm bound)"):format(
    N, s, tm * 1e3, flops / tm * 1e-9, tm / tg))
end
for _, chunk in ipairs({ 256, 1024, 4096, 16384, M }) do
  emp.chunk = chunk
  local tm = best_time(function() emp(x, { t = 0.5, alpha = 1, sigma = 1 }) end)
  print(("  chunk %5d: %7.1f ms  %6.1f GFLOP/s  scratch %.1f MB"):format(chunk, tm * 1e3, flops / tm * 1e-9,
    N * chunk * 4 / 2 ^ 20))
end
emp.chunk = nil
local tiny = emp(x, { t = 0, alpha = 1, sigma = 1e-30 })
assert(tiny:sum() == tiny:sum(), "NaN at tiny sigma")

-- ---- Gaussian mixture ----
local function gmm_case(Kc, Dg, Ng, path)
  local g = models.gmm { means = diffuse.randn({ Kc, Dg }, { seed = 3 }):mul(2),
    vars = diffuse.rand({ Kc, Dg }, { seed = 4 }):add(0.1) }
  g._path = path
  local xg = diffuse.randn({ Ng, Dg }, { seed = 5 }):mul(2)
  local p = { t = 0.5, alpha = 0.9, sigma = 0.5 }
  local tm = best_time(function() g(xg, p) end)
  print(("  gmm K=%-4d D=%-4d N=%-5d %-6s %8.3f ms"):format(Kc, Dg, Ng, path == 1 and "direct" or "gemm", tm * 1e3))
end
print("Gaussian mixture (diagonal):")
gmm_case(8, 2, 1000, 1)
gmm_case(100, 784, 64, 1)
gmm_case(100, 784, 64, 2)
gmm_case(1000, 784, 64, 1)
gmm_case(1000, 784, 64, 2)

-- ---- Gaussian model (784-d, eigendecomposition once) ----
local sub = data:narrow(1, 1, 10000)
t0 = diffuse.wtime()
local gm = models.gaussian(sub)
print(("Gaussian model from 10000 x 784 rows: built in %.0f ms (covariance + dsyevd)"):format((diffuse.wtime() - t0) * 1e3))
local tm = best_time(function() gm(x, { t = 0.5, alpha = 1, sigma = 1 }) end)
print(("  gaussian N=%d: %.2f ms per call"):format(N, tm * 1e3))
