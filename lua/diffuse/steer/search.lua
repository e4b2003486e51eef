-- Searchers: best-of-N (with importance resampling as the tilted-target baseline) and the
-- noise searches of Ma et al. 2025, "Inference-Time Scaling for Diffusion Models beyond
-- Scaling Denoising Steps": random search, zero-order search and search over paths.
--
-- These methods are measured by the reward they reach per network evaluation, not by a
-- distance to the tilted target (except best_of_n{select = "resample"}, self-normalised
-- importance sampling of the tilted target, the baseline the tilted-target methods beat).
--
-- The noise searches run the chain deterministically (eta = 0, DDIM: the probability-flow
-- ODE's first-order solver), so an initial noise fixes its sample and searching noises is
-- searching samples.  A "noise" is a standard normal row z; the chain starts from
-- x_1 = sigma(t_1) z.
--
-- Noise rows.  best_of_n and random_search give sample k (0-based) the row base + k of the
-- chain's stream (seed, draw 1) for its prior noise and the same row of draw 1 + i for the
-- kernel's noise of step i, reserving n rows of the stream.  So the samples do not depend on
-- `batch`, and the first m samples of a run with n > m are the samples of the run with
-- n = m: best-of-m for every m <= n is read off all_rewards.
local core = require("diffuse.core")
local util = require("diffuse.util")
local chain_mod = require("diffuse.steer.chain")
local rewards_mod = require("diffuse.steer.rewards")
local weights = require("diffuse.steer.weights")

local M = {}
local fail, is_tensor = util.fail, util.is_tensor
local sqrt, inf = math.sqrt, math.huge

-- Keys of the uniform streams (weights.stream) this module uses.
local KEY_RESAMPLE = 701

local function check_reward(F, r)
  if r == nil then fail(F, "'reward' is required (a function(x, ctx) -> one value per row)", 3) end
  if not rewards_mod.callable(r) then fail(F, ("'reward' must be a function(x, ctx), got %s"):format(type(r)), 3) end
  return r
end

local function check_number(F, name, v, lo, hi, default)
  if v == nil then return default end
  if type(v) ~= "number" or v ~= v or v < lo or v > hi then
    fail(F, ("'%s' must be a number in [%g, %g], got %s"):format(name, lo, hi, tostring(v)), 3)
  end
  return v
end

local function sample_shape(c, rows)
  local shape = { rows }
  for i, v in ipairs(c.shape) do shape[i + 1] = v end
  return shape
end

-- Rows first .. first + count - 1 (0-based) of the chain's noise stream (draw 1, the one
-- chain:noise uses) or of draw `draw`.
local function noise_rows(c, first, count, draw)
  return core.randn(sample_shape(c, count), { seed = c.seed, offset = first, draw = draw or 1 })
end

-- A zero tensor of `rows` samples.
local function empty(c, rows) return core.zeros(sample_shape(c, rows)) end

local function final_rewards(c, r, x)
  return c:reward(r, x, { x_t = x, point = c.points[c.n + 1], step = c.n + 1 })
end

-- Indices 1..#v sorted by value, highest first (ties: lower index first).
local function order_desc(v)
  local idx = {}
  for i = 1, #v do idx[i] = i end
  table.sort(idx, function(a, b)
    if v[a] ~= v[b] then return v[a] > v[b] end
    return a < b
  end)
  return idx
end

local pick = weights.gather

local function progress_bar(o, total, label)
  if not o.progress then return nil end
  return require("diffuse.progress").new{ total = math.max(total, 1), label = label, unit = "nfe" }
end

local function tick(bar, c, extra) if bar then bar:update(math.min(c.nfe, bar.total), extra) end end
local function done(bar, extra) if bar then bar:finish(extra) end end

local function result(method, c, x, rews, best_x, best_r, extra)
  local out = { method = method, x = x, rewards = rews, best = { x = best_x, reward = best_r } }
  for k, v in pairs(c:stats()) do out[k] = v end
  for k, v in pairs(extra or {}) do out[k] = v end
  return out
end

-- Steps i_from .. i_to from x at t_(i_from), `batch` rows per model call; the kernel's noise
-- (eta > 0) comes from noise(i, first, count) when given (rows first..first+count-1 of the
-- batch, 0-based), else from the chain's stream.  Returns x at t_(i_to + 1) and the x0
-- estimate of the last evaluation (at t_(i_to)).
local function solve(c, x, i_from, i_to, batch, noise, bar)
  local n = #x
  if i_to < i_from then return x, nil end
  local out, last = empty(c, n), empty(c, n)
  for first = 0, n - 1, batch do
    local b = math.min(batch, n - first)
    local xb, x0 = x:narrow(1, first + 1, b), nil
    for i = i_from, i_to do
      local eps
      x0, eps = c:denoise(xb, i)
      local z = noise and select(3, c:coefficients(i)) > 0 and noise(i, first, b) or nil
      xb = c:move(xb, x0, eps, i, z)
      tick(bar, c)
    end
    out:narrow(1, first + 1, b):copy_(xb)
    last:narrow(1, first + 1, b):copy_(x0)
  end
  return out, last
end

-- n samples of the chain from rows of a reserved noise block (see the header), `batch` per
-- model call: the samples (n rows) and their final rewards.
local function sample_all(c, r, n, batch, bar)
  local base = c.rows_drawn
  c.rows_drawn = base + n
  local x = noise_rows(c, base, n):mul_(c.points[1].sigma)
  local xs = solve(c, x, 1, c.n, batch, function(i, first, count)
    return noise_rows(c, base + first, count, 1 + i)
  end, bar)
  return xs, final_rewards(c, r, xs)
end

local resamplers = { multinomial = true, systematic = true }

-- best_of_n{<chain options | chain>, reward, n, batch = n, select = "best" | "resample",
--           keep = 1, lambda = 1 (required for "resample"), resampling = "multinomial" |
--           "systematic", seed, progress}
-- n independent samples of the chain (its eta: 1 the stochastic kernel, 0 deterministic DDIM).
-- "best": the top `keep` by final reward.  "resample": `keep` rows drawn from the n samples
-- with probabilities proportional to exp(lambda r) (self-normalised importance sampling of
-- p(x) exp(lambda r(x)) / Z).  Cost: n * steps NFE, ceil(n / batch) * steps calls, n reward
-- evaluations in one reward call.
function M.best_of_n(o)
  local F = "steer.best_of_n"
  local c = chain_mod.from_options(F, o, { reward = true, n = true, batch = true, select = true, keep = true,
    lambda = true, resampling = true, progress = true, seed = true }, 2)
  local r = check_reward(F, o.reward)
  local n = util.check_int(F, "n", o.n, 1, 2)
  local batch = util.check_int(F, "batch", o.batch or n, 1, 2)
  local mode = o.select or "best"
  if mode ~= "best" and mode ~= "resample" then
    fail(F, ("'select' must be \"best\" or \"resample\", got %s"):format(tostring(mode)), 2)
  end
  local keep = util.check_int(F, "keep", o.keep or 1, 1, 2)
  if mode == "best" and keep > n then fail(F, ("'keep' (%d) cannot exceed 'n' (%d) with select = \"best\""):format(keep, n), 2) end
  if mode == "resample" and o.lambda == nil then
    fail(F, "select = \"resample\" needs 'lambda' (the tilt: weights exp(lambda * reward))", 2)
  end
  local lambda = check_number(F, "lambda", o.lambda, 0, inf, 1)
  if lambda == inf then fail(F, "'lambda' must be finite", 2) end
  local method = o.resampling or "multinomial"
  if not resamplers[method] then
    fail(F, ("'resampling' must be \"multinomial\" or \"systematic\", got %s"):format(tostring(method)), 2)
  end
  local bar = progress_bar(o, n * c.n, "best_of_n")
  local xs, all = sample_all(c, r, n, batch, bar)
  local lw = {}
  for k = 1, n do lw[k] = lambda * all[k] end
  local idx
  if mode == "best" then
    local ord = order_desc(all)
    idx = {}
    for k = 1, keep do idx[k] = ord[k] end
  else
    if weights.logsumexp(lw) == -inf then
      fail(F, "every sample has reward -inf: nothing to resample", 2)
    end
    idx = weights.resample(method, lw, keep, weights.stream(c.seed, KEY_RESAMPLE))
  end
  local bi = weights.argmax(all)
  -- Best-so-far after each batch, the curve of a run stopped there.
  local trace, best = {}, -inf
  for first = 0, n - 1, batch do
    for k = first + 1, math.min(first + batch, n) do if all[k] > best then best = all[k] end end
    trace[#trace + 1] = { n = math.min(first + batch, n), nfe = math.min(first + batch, n) * c.n, best = best }
  end
  done(bar, { best = all[bi] })
  return result("best_of_n", c, xs:gather(idx), pick(all, idx), xs:gather({ bi }), all[bi], {
    all_rewards = all, log_weights = lw, ess = weights.ess(lw), indices = idx, select = mode, lambda = lambda,
    trace = trace,
  })
end

-- The chain of a noise search: deterministic (eta = 0) whatever the chain given says.
local function deterministic_chain(F, o, own)
  if o and o.chain == nil and o.eta ~= nil and o.eta ~= 0 then
    fail(F, ("noise search runs the deterministic sampler: 'eta' must be 0 or absent, got %s"):format(tostring(o.eta)), 3)
  end
  local c = chain_mod.from_options(F, o, own, 3)
  c.eta = 0
  return c
end

-- random_search{<chain options | chain>, reward, n, batch = n, seed, progress}
-- The best of n random initial noises through the deterministic sampler.  Same noises as
-- best_of_n with eta = 0.  Returns best (with best.noise, its standard normal noise row),
-- all_rewards, and trace: {n, nfe, best} after each batch.  Cost: n * steps NFE.
function M.random_search(o)
  local F = "steer.random_search"
  local c = deterministic_chain(F, o, { reward = true, n = true, batch = true, progress = true, seed = true })
  local r = check_reward(F, o.reward)
  local n = util.check_int(F, "n", o.n, 1, 2)
  local batch = util.check_int(F, "batch", o.batch or n, 1, 2)
  local bar = progress_bar(o, n * c.n, "random_search")
  local base = c.rows_drawn
  local xs, all = sample_all(c, r, n, batch, bar)
  local bi = weights.argmax(all)
  local trace, best = {}, -inf
  for first = 0, n - 1, batch do
    for k = first + 1, math.min(first + batch, n) do if all[k] > best then best = all[k] end end
    trace[#trace + 1] = { n = math.min(first + batch, n), nfe = math.min(first + batch, n) * c.n, best = best }
  end
  done(bar, { best = all[bi] })
  local out = result("random_search", c, xs:gather({ bi }), { all[bi] }, xs:gather({ bi }), all[bi], {
    all_rewards = all, trace = trace })
  out.best.noise = noise_rows(c, base + bi - 1, 1)
  return out
end

local function norm(z) return sqrt(z:square():sum()) end

-- Rows of z (K rows) flattened to (K, D).
local function flat(z) return z:reshape(#z, z:numel() // #z) end

-- N neighbours of the pivot noise p (one row) at cosine similarity cos on the sphere of
-- radius |p|: for a fresh standard normal direction g (one per neighbour),
--     u = g - (g . p^) p^,  u^ = u / |u|,  neighbour = |p| (cos p^ + sqrt(1 - cos^2) u^),
-- where p^ = p / |p|.  Every neighbour has the pivot's norm and cosine exactly `cos` with it;
-- its direction within the orthogonal complement is uniform.  (High-dimensional Gaussian
-- noise lives near the sphere of radius sqrt(D), so keeping the norm keeps neighbours typical.)
local function neighbours(c, p, N, cos)
  local pf = flat(p)
  local R = norm(p)
  local ph = pf:div(R)
  local g = flat(c:noise(N))
  local proj = g:matmul(ph:t():contiguous())             -- (N, 1): g . p^
  local u = g:sub(proj:matmul(ph))                       -- g minus its component along p^
  local un = u:square():sum(2):sqrt():reshape(N, 1)       -- (N, 1)
  local s = sqrt(math.max(0, 1 - cos * cos))
  local out = u:div_(un):mul_(R * s):add_(ph:mul(R * cos)) -- the pivot's row broadcasts
  return out:reshape(sample_shape(c, N))
end

-- zero_order{<chain options | chain>, reward, candidates = 8, iterations = 4,
--            cosine = 0.9 | radius = d, pivot = z (optional start noise, one row), batch =
--            candidates + 1, seed, progress}
-- Zero-order search: a pivot noise (a fresh standard normal row, or `pivot`) and, at every
-- iteration, `candidates` neighbours on the sphere around it (see neighbours above; radius d
-- is the Euclidean distance to the pivot, i.e. cosine = 1 - d^2 / (2 |pivot|^2)), all run
-- through the deterministic sampler; the best neighbour becomes the pivot when it beats it.
-- The pivot is evaluated with the first iteration's neighbours (one batch).
-- Cost: (1 + candidates * iterations) * steps NFE.  trace: {iteration, nfe, best, moved}.
function M.zero_order(o)
  local F = "steer.zero_order"
  local c = deterministic_chain(F, o, { reward = true, candidates = true, iterations = true, cosine = true,
    radius = true, pivot = true, batch = true, progress = true, seed = true })
  local r = check_reward(F, o.reward)
  local N = util.check_int(F, "candidates", o.candidates or 8, 1, 2)
  local K = util.check_int(F, "iterations", o.iterations or 4, 1, 2)
  if o.cosine ~= nil and o.radius ~= nil then fail(F, "give 'cosine' or 'radius', not both", 2) end
  local cos = check_number(F, "cosine", o.cosine, -1, 1, 0.9)
  local radius = check_number(F, "radius", o.radius, 0, inf, nil)
  if radius == inf then fail(F, "'radius' must be finite", 2) end
  local batch = util.check_int(F, "batch", o.batch or (N + 1), 1, 2)
  local D = 1
  for _, v in ipairs(c.shape) do D = D * v end
  if D < 2 then fail(F, "samples need at least 2 values: neighbours lie on a sphere", 2) end
  local pivot
  if o.pivot ~= nil then
    if not is_tensor(o.pivot) or o.pivot:numel() ~= D then
      fail(F, ("'pivot' must be a tensor of one sample's %d values (a standard normal noise)"):format(D), 2)
    end
    pivot = o.pivot:reshape(sample_shape(c, 1))
    if not (norm(pivot) > 0) then fail(F, "'pivot' must not be zero", 2) end
  else
    pivot = c:noise(1)
  end
  local bar = progress_bar(o, (1 + N * K) * c.n, "zero_order")
  local sigma1 = c.points[1].sigma
  local pivot_r, pivot_x = nil, nil
  local trace = {}
  for it = 1, K do
    -- radius: the cosine of a chord of that length on the sphere of the pivot's norm.
    local R = norm(pivot)
    local nb = neighbours(c, pivot, N, radius and math.max(-1, 1 - radius * radius / (2 * R * R)) or cos)
    local z = nb
    if it == 1 and pivot_r == nil then
      z = empty(c, N + 1)
      z:narrow(1, 1, 1):copy_(pivot)
      z:narrow(1, 2, N):copy_(nb)
    end
    local xs = solve(c, z:mul(sigma1), 1, c.n, batch, nil, bar)
    local rw = final_rewards(c, r, xs)
    local off = 0
    if #z == N + 1 then
      pivot_r, pivot_x, off = rw[1], xs:narrow(1, 1, 1):clone(), 1
    end
    local bi, br = 1 + off, rw[1 + off]
    for k = 2 + off, #rw do if rw[k] > br then bi, br = k, rw[k] end end
    local moved = br > pivot_r
    if moved then pivot, pivot_r, pivot_x = z:narrow(1, bi, 1):clone(), br, xs:narrow(1, bi, 1):clone() end
    trace[it] = { iteration = it, nfe = c.nfe, best = pivot_r, moved = moved }
    tick(bar, c, { best = pivot_r })
  end
  done(bar, { best = pivot_r })
  local out = result("zero_order", c, pivot_x, { pivot_r }, pivot_x, pivot_r, { trace = trace, cosine = cos })
  out.best.noise = pivot
  return out
end

-- The forward process from grid point j to the noisier grid point jp < j:
-- x_jp = (a_jp / a_j) x_j + sqrt(s_jp^2 - (a_jp s_j / a_j)^2) z, i.e. q(x_jp | x_j).
local function renoise(c, x, j, jp)
  local a, b = c.points[j], c.points[jp]
  local ratio = b.alpha / a.alpha
  local sd = sqrt(math.max(0, b.sigma * b.sigma - (ratio * a.sigma) ^ 2))
  return core.lincomb({ x, c:noise(#x) }, { ratio, sd })
end

-- path_search{<chain options | chain>, reward, paths = 4, candidates = 4, start, forward = 1,
--             back = 2, batch = paths * candidates, seed, progress}
-- Search over paths (Ma et al. 2025, section 3.2), on the chain's grid (points 1..n+1, t
-- decreasing): `paths` noises run deterministically from t_1 to grid point `start`
-- (default: the first quarter of the grid, at least forward + 1).  Then, in rounds, every
-- kept state x_j is re-noised by the forward process `candidates` times to the noisier point
-- j - forward, each copy is solved back deterministically `back` steps (to j - forward +
-- back, capped at n + 1), and the `paths` best of the paths * candidates states by the
-- reward of their x0 estimate are kept; repeat until t_(n+1).  The x0 estimate of a state
-- x_j is the one of the solve's last evaluation (at t_(j-1); the deterministic step makes
-- x_j = alpha_j x0 + sigma_j eps from it), so valuing costs no extra model call.  At t_(n+1)
-- the value is the final reward.  back > forward, so each round advances back - forward
-- grid points.
-- Cost: paths * (start - 1) + sum over rounds paths * candidates * (steps solved) NFE.
-- trace: one entry per round {round, step = j, t, nfe, value = best value of the round}.
function M.path_search(o)
  local F = "steer.path_search"
  local c = deterministic_chain(F, o, { reward = true, paths = true, candidates = true, start = true,
    forward = true, back = true, batch = true, progress = true, seed = true })
  local r = check_reward(F, o.reward)
  local N = util.check_int(F, "paths", o.paths or 4, 1, 2)
  local Mc = util.check_int(F, "candidates", o.candidates or 4, 1, 2)
  local fwd = util.check_int(F, "forward", o.forward or 1, 1, 2)
  local back = util.check_int(F, "back", o.back or 2, 1, 2)
  if back <= fwd then fail(F, ("'back' (%d) must exceed 'forward' (%d): each round must advance"):format(back, fwd), 2) end
  local start = util.check_int(F, "start", o.start or math.max(fwd + 1, c.n // 4 + 1), 1, 2)
  if start <= fwd or start > c.n then
    fail(F, ("'start' must be a grid point in %d..%d (forward + 1 .. steps), got %d"):format(fwd + 1, c.n, start), 2)
  end
  local batch = util.check_int(F, "batch", o.batch or N * Mc, 1, 2)
  -- NFE of the plan, for the progress bar.
  local total, j = N * (start - 1), start
  while j < c.n + 1 do
    local jn = math.min(j - fwd + back, c.n + 1)
    total = total + N * Mc * (jn - (j - fwd))
    j = jn
  end
  local bar = progress_bar(o, total, "path_search")
  local x = c:noise(N):mul_(c.points[1].sigma)
  x = solve(c, x, 1, start - 1, batch, nil, bar)
  local trace, values = {}, nil
  j = start
  local round = 0
  while j < c.n + 1 do
    round = round + 1
    local jp, jn = j - fwd, math.min(j - fwd + back, c.n + 1)
    local rep = {}
    for p = 1, N do for _ = 1, Mc do rep[#rep + 1] = p end end
    local cand = renoise(c, x:gather(rep), j, jp)
    local xs, x0 = solve(c, cand, jp, jn - 1, batch, nil, bar)
    local v
    if jn == c.n + 1 then
      v = final_rewards(c, r, xs)
    else
      v = c:reward(r, x0, { x_t = xs, point = c.points[jn], step = jn })
    end
    local ord = order_desc(v)
    local keep = {}
    for k = 1, N do keep[k] = ord[k] end
    x, values = xs:gather(keep), pick(v, keep)
    j = jn
    trace[round] = { round = round, step = j, t = c.times[j], nfe = c.nfe, value = values[1] }
    tick(bar, c, { value = values[1] })
  end
  done(bar, { best = values[1] })
  -- values are final rewards now, highest first.
  return result("path_search", c, x, values, x:narrow(1, 1, 1):clone(), values[1], { trace = trace, start = start })
end

return M
