-- Sample-quality metrics over feature tensors (N, D): moments and the Fréchet distance, KID,
-- RBF-kernel MMD, precision / recall / density / coverage, class accuracy; for exact models
-- the distance to the exact ODE solution and the log-likelihood under a mixture; a cache of
-- reference statistics.  Per-element work is C (src/metrics.c, through core._metrics); this
-- file checks arguments and options and assembles the results.  See docs/metrics.md.
local core = require("diffuse.core")

local K = core._metrics
local M = {}

local util = require("diffuse.util")
local is_tensor, shape_str, fail, sorted_keys, check_options =
  util.is_tensor, util.shape_str, util.fail, util.sorted_keys, util.check_options

local function check_int(fname, name, v, lo, level)
  if math.type(v) ~= "integer" and not (type(v) == "number" and v == math.floor(v) and v > -2^63 and v < 2^63) then
    fail(fname, ("%s must be an integer, got %s"):format(name, tostring(v)), level + 1)
  end
  v = math.tointeger(v)
  if lo and v < lo then fail(fname, ("%s must be >= %d, got %d"):format(name, lo, v), level + 1) end
  return v
end

-- A (N, D) feature tensor with dense rows.
local function features_arg(fname, name, x, level)
  if not is_tensor(x) then fail(fname, ("%s must be a (N, D) feature tensor, got %s"):format(name, type(x)), level + 1) end
  if x:dim() ~= 2 then fail(fname, ("%s must be a 2-d (N, D) feature tensor, got %s"):format(name, shape_str(x)), level + 1) end
  local st = x:stride()
  if x:size(2) > 1 and st[2] ~= 1 then return x:contiguous() end
  return x
end

local function same_dim(fname, a, b, level)
  if a:size(2) ~= b:size(2) then
    fail(fname, ("feature sizes differ: a is %s, b is %s"):format(shape_str(a), shape_str(b)), level + 1)
  end
end

-- Rows of x picked by a seeded random permutation (counter-based: depends only on the seed).
local function permutation(n, seed, draw)
  if n == 0 then return {} end
  local keys = core.rand({ n }, { seed = seed, draw = draw }):totable()
  local idx = {}
  for i = 1, n do idx[i] = i end
  table.sort(idx, function(a, b)
    if keys[a] ~= keys[b] then return keys[a] < keys[b] end
    return a < b
  end)
  return idx
end

----------------------------------------------------------------------------------------------
-- Moments and the Fréchet distance

local Stats = {}
Stats.__index = Stats
M.Stats = Stats

local function make_stats(mu64, sigma64, n, d)
  local mu = K.f64_split(mu64, { d })
  local sigma = K.f64_split(sigma64, { d, d })
  return setmetatable({ mu = mu, sigma = sigma, n = n, d = d, mu64 = mu64, sigma64 = sigma64 }, Stats)
end

function Stats:__tostring()
  return ("diffuse metrics stats: n = %s, D = %d%s"):format(tostring(self.n), self.d,
    self.cached ~= nil and (self.cached and " (from cache)" or " (computed)") or "")
end

function M.stats(features)
  local x = features_arg("stats", "features", features, 2)
  local n, d = x:size(1), x:size(2)
  if n < 2 then fail("stats", ("need at least 2 rows for a covariance, got %d"):format(n), 2) end
  local mu64, sigma64 = K.stats(x)
  return make_stats(mu64, sigma64, n, d)
end

-- Stats from stats, a feature tensor, or a plain table {mu = (D) tensor or list, sigma = (D, D) tensor}.
local function as_stats(fname, name, v, level)
  if getmetatable(v) == Stats then return v end
  if is_tensor(v) then
    local x = features_arg(fname, name, v, level + 1)
    if x:size(1) < 2 then fail(fname, ("%s needs at least 2 rows, got %d"):format(name, x:size(1)), level + 1) end
    local mu64, sigma64 = K.stats(x)
    return make_stats(mu64, sigma64, x:size(1), x:size(2))
  end
  if type(v) ~= "table" or v.mu == nil or v.sigma == nil then
    fail(fname, ("%s must be stats (metrics.stats), a (N, D) feature tensor, or {mu = ..., sigma = ...}"):format(name),
      level + 1)
  end
  local mu64
  if is_tensor(v.mu) then
    if v.mu:dim() ~= 1 then fail(fname, ("%s.mu must be 1-d (D), got %s"):format(name, shape_str(v.mu)), level + 1) end
    mu64 = K.f64_from(v.mu)
  elseif type(v.mu) == "table" then
    local ok, b = pcall(K.f64_from_table, v.mu)
    if not ok then fail(fname, ("%s.mu: %s"):format(name, b), level + 1) end
    mu64 = b
  else
    fail(fname, ("%s.mu must be a 1-d tensor or a list of numbers"):format(name), level + 1)
  end
  local d = #mu64
  local sigma64
  if is_tensor(v.sigma) and v.sigma:dim() == 2 and v.sigma:size(1) == d and v.sigma:size(2) == d then
    sigma64 = K.f64_from(v.sigma)
  elseif type(v.sigma) == "table" and not is_tensor(v.sigma) and #v.sigma == d then
    local flat = {}
    for i = 1, d do
      local row = v.sigma[i]
      if type(row) ~= "table" or #row ~= d then
        fail(fname, ("%s.sigma must be a (%d, %d) tensor or nested table; row %d is not a list of %d numbers"):format(
          name, d, d, i, d), level + 1)
      end
      table.move(row, 1, d, #flat + 1, flat)
    end
    local ok, b = pcall(K.f64_from_table, flat)
    if not ok then fail(fname, ("%s.sigma: %s"):format(name, b), level + 1) end
    sigma64 = b
  else
    fail(fname, ("%s.sigma must be a (%d, %d) tensor or nested table, got %s"):format(name, d, d,
      is_tensor(v.sigma) and shape_str(v.sigma) or type(v.sigma)), level + 1)
  end
  local s = setmetatable({ n = v.n, d = d, mu64 = mu64, sigma64 = sigma64 }, Stats)
  s.mu = K.f64_split(mu64, { d })
  s.sigma = K.f64_split(sigma64, { d, d })
  return s
end

-- An eigenvalue below -TOL * (largest eigenvalue) is more than rounding: say so.
local CLAMP_TOL = 1e-6

function M.frechet_distance(a, b)
  local F = "frechet_distance"
  local sa = as_stats(F, "a", a, 2)
  local sb = as_stats(F, "b", b, 2)
  if sa.d ~= sb.d then fail(F, ("feature sizes differ: a has D = %d, b has D = %d"):format(sa.d, sb.d), 2) end
  local fd, info = K.frechet(sa.mu64, sa.sigma64, sb.mu64, sb.sigma64)
  local notes = {}
  if info.min_eig1 < -CLAMP_TOL * math.max(info.max_eig1, 0) then
    notes[#notes + 1] = ("covariance of a has %d negative eigenvalue(s), down to %.3g (largest %.3g): not a covariance?")
      :format(info.clamped1, info.min_eig1, info.max_eig1)
  end
  if info.min_eig_m < -CLAMP_TOL * math.max(info.max_eig_m, 0) then
    notes[#notes + 1] = ("S1^1/2 S2 S1^1/2 has %d negative eigenvalue(s), down to %.3g (largest %.3g), clamped to 0")
      :format(info.clamped_m, info.min_eig_m, info.max_eig_m)
  end
  if #notes > 0 then info.warning = table.concat(notes, "; ") end
  return fd, info
end

----------------------------------------------------------------------------------------------
-- Kernel two-sample statistics

local kid_options = { subsets = true, subset_size = true, seed = true, degree = true, gamma = true, coef0 = true }

function M.kid(fa, fb, opts)
  local F = "kid"
  opts = check_options(F, opts, kid_options, 2)
  local a = features_arg(F, "fa", fa, 2)
  local b = features_arg(F, "fb", fb, 2)
  same_dim(F, a, b, 2)
  local d = a:size(2)
  local subsets = check_int(F, "subsets", opts.subsets or 100, 1, 2)
  local m = check_int(F, "subset_size", opts.subset_size or 1000, 2, 2)
  local seed = check_int(F, "seed", opts.seed or 0, nil, 2)
  local degree = check_int(F, "degree", opts.degree or 3, 0, 2)
  if degree > 64 then fail(F, "degree must be at most 64", 2) end
  local gamma = opts.gamma or 1 / d
  local coef0 = opts.coef0 or 1
  if type(gamma) ~= "number" or type(coef0) ~= "number" then fail(F, "gamma and coef0 must be numbers", 2) end
  if m > a:size(1) or m > b:size(1) then
    fail(F, ("subset_size %d exceeds the rows of fa (%d) or fb (%d): pass a smaller subset_size"):format(
      m, a:size(1), b:size(1)), 2)
  end
  local values = K.kid(a, b, subsets, m, seed, "poly", gamma, coef0, degree)
  local mean = 0
  for i = 1, subsets do mean = mean + values[i] end
  mean = mean / subsets
  local var = 0
  for i = 1, subsets do var = var + (values[i] - mean) ^ 2 end
  return mean, math.sqrt(var / subsets), values
end

local mmd_options = { bandwidth = true, seed = true, median_rows = true, chunk = true }

function M.mmd(fa, fb, opts)
  local F = "mmd"
  opts = check_options(F, opts, mmd_options, 2)
  local a = features_arg(F, "fa", fa, 2)
  local b = features_arg(F, "fb", fb, 2)
  same_dim(F, a, b, 2)
  if a:size(1) < 2 or b:size(1) < 2 then fail(F, "each set needs at least 2 rows", 2) end
  local bw = opts.bandwidth or "median"
  if bw == "median" then
    local seed = check_int(F, "seed", opts.seed or 0, nil, 2)
    local cap = check_int(F, "median_rows", opts.median_rows or 1000, 2, 2)
    local na, nb = a:size(1), b:size(1)
    local pooled
    if na + nb <= cap then
      pooled = core.zeros(na + nb, a:size(2))
      pooled:narrow(1, 1, na):copy_(a)
      pooled:narrow(1, na + 1, nb):copy_(b)
    else
      -- the same number of rows from each set, chosen by a seeded permutation
      local ka = math.min(na, cap // 2)
      local kb = math.min(nb, cap - ka)
      local pa, pb = permutation(na, seed, 0), permutation(nb, seed, 1)
      local ia, ib = {}, {}
      for i = 1, ka do ia[i] = pa[i] end
      for i = 1, kb do ib[i] = pb[i] end
      pooled = core.zeros(ka + kb, a:size(2))
      pooled:narrow(1, 1, ka):copy_(a:gather(ia))
      pooled:narrow(1, ka + 1, kb):copy_(b:gather(ib))
    end
    bw = K.median_distance(pooled)
    if not (bw > 0) then fail(F, "the median pairwise distance is 0 (duplicate rows?): pass a bandwidth", 2) end
  elseif type(bw) ~= "number" or not (bw > 0 and bw < math.huge) then
    fail(F, ("bandwidth must be 'median' or a positive number, got %s"):format(tostring(bw)), 2)
  end
  local gamma = 1 / (2 * bw * bw)
  local chunk = check_int(F, "chunk", opts.chunk or 0, 0, 2)
  local sxx, syy, sxy = K.kernel_sums(a, b, "rbf", gamma, 0, 1, chunk)
  local na, nb = a:size(1), b:size(1)
  local mmd2 = sxx / (na * (na - 1)) + syy / (nb * (nb - 1)) - 2 * sxy / (na * nb)
  return mmd2, { bandwidth = bw, gamma = gamma }
end

----------------------------------------------------------------------------------------------
-- Precision, recall, density, coverage

local prdc_options = { k = true, inclusive = true, chunk = true }

function M.prdc(real, fake, opts)
  local F = "prdc"
  opts = check_options(F, opts, prdc_options, 2)
  local r = features_arg(F, "real", real, 2)
  local f = features_arg(F, "fake", fake, 2)
  same_dim(F, r, f, 2)
  local k = check_int(F, "k", opts.k or 5, 1, 2)
  if k > 64 then fail(F, "k must be at most 64", 2) end
  if r:size(1) <= k or f:size(1) <= k then
    fail(F, ("each set needs more than k = %d rows (real has %d, fake %d)"):format(k, r:size(1), f:size(1)), 2)
  end
  local chunk = check_int(F, "chunk", opts.chunk or 0, 0, 2)
  local rr = K.knn_radii(r, k, chunk)
  local fr = K.knn_radii(f, k, chunk)
  local p, rc, d, c = K.prdc(r, f, k, rr, fr, opts.inclusive and true or false, chunk)
  return { precision = p, recall = rc, density = d, coverage = c }
end

----------------------------------------------------------------------------------------------
-- Class accuracy

local function label_values(fname, name, v, level)
  if is_tensor(v) then
    if v:dim() ~= 1 then fail(fname, ("%s must be a list or a 1-d tensor, got %s"):format(name, shape_str(v)), level + 1) end
    return v:totable()
  end
  if type(v) ~= "table" then fail(fname, ("%s must be a list or a 1-d tensor, got %s"):format(name, type(v)), level + 1) end
  return v
end

function M.class_accuracy(pred, labels)
  local F = "class_accuracy"
  local predicted
  if is_tensor(pred) and pred:dim() == 2 then
    local idx = pred:argmax(2):totable()
    predicted = {}
    for i = 1, #idx do predicted[i] = math.tointeger(idx[i]) - 1 end
  elseif is_tensor(pred) and pred:dim() ~= 1 then
    fail(F, ("expected (N, C) logits or N predicted labels, got %s"):format(shape_str(pred)), 2)
  else
    predicted = label_values(F, "predictions", pred, 2)
  end
  local lab = label_values(F, "labels", labels, 2)
  if #lab ~= #predicted then
    fail(F, ("%d predictions but %d labels"):format(#predicted, #lab), 2)
  end
  local n = #lab
  if n == 0 then fail(F, "no labels", 2) end
  local correct, per, count = 0, {}, {}
  for i = 1, n do
    local l = lab[i]
    if type(l) ~= "number" then fail(F, ("labels[%d] must be a number, got %s"):format(i, type(l)), 2) end
    l = math.tointeger(l) or l
    count[l] = (count[l] or 0) + 1
    local ok = predicted[i] == l
    if ok then correct = correct + 1 end
    per[l] = (per[l] or 0) + (ok and 1 or 0)
  end
  for l, c in pairs(count) do per[l] = per[l] / c end
  return correct / n, { correct = correct, n = n, per_class = per, counts = count }
end

----------------------------------------------------------------------------------------------
-- Exact models

function M.ode_error(x, x_exact)
  local F = "ode_error"
  if not is_tensor(x) then fail(F, ("x must be a tensor, got %s"):format(type(x)), 2) end
  if not is_tensor(x_exact) then fail(F, ("x_exact must be a tensor, got %s"):format(type(x_exact)), 2) end
  if shape_str(x) ~= shape_str(x_exact) then
    fail(F, ("size mismatch: x is %s, x_exact is %s"):format(shape_str(x), shape_str(x_exact)), 2)
  end
  if x:numel() == 0 then fail(F, "empty tensors", 2) end
  local diff = x:sub(x_exact)
  local rms = math.sqrt(diff:square():mean())
  local ref = math.sqrt(x_exact:square():mean())
  return { rms = rms, max = diff:abs():max(), rel = ref > 0 and rms / ref or (rms == 0 and 0 or math.huge) }
end

function M.log_likelihood(model, x, opts)
  local F = "log_likelihood"
  if type(model) ~= "table" or type(model.log_prob) ~= "function" then
    fail(F, "model must have a log_prob method (diffuse.models.gmm or gaussian)", 2)
  end
  local lp = model:log_prob(x, opts)
  return lp:mean(), lp
end

----------------------------------------------------------------------------------------------
-- Features, reference statistics, floor

local features_options = { batch = true }

function M.features(feature_fn, data, opts)
  local F = "features"
  opts = check_options(F, opts, features_options, 2)
  if not is_tensor(data) then fail(F, ("data must be a tensor, got %s"):format(type(data)), 2) end
  if feature_fn == nil then return features_arg(F, "data", data, 2) end
  if type(feature_fn) ~= "function" and not (getmetatable(feature_fn) or {}).__call then
    fail(F, "feature_fn must be a function", 2)
  end
  local n = data:size(1)
  local batch = check_int(F, "batch", opts.batch or 500, 1, 2)
  local out
  for i = 1, n, batch do
    local b = math.min(batch, n - i + 1)
    local f = feature_fn(data:narrow(1, i, b))
    if not is_tensor(f) or f:dim() ~= 2 or f:size(1) ~= b then
      fail(F, ("feature_fn must return a (%d, D) tensor for a batch of %d, got %s"):format(b, b,
        is_tensor(f) and shape_str(f) or type(f)), 2)
    end
    if not out then out = core.zeros(n, f:size(2))
    elseif f:size(2) ~= out:size(2) then
      fail(F, ("feature_fn returned D = %d, earlier batches D = %d"):format(f:size(2), out:size(2)), 2)
    end
    out:narrow(1, i, b):copy_(f)
  end
  if not out then fail(F, "data has no rows", 2) end
  return out
end

local STATS_FORMAT = "diffuse-metrics-stats-1"

local function default_cache_dir()
  local xdg = os.getenv("XDG_CACHE_HOME")
  if xdg and xdg ~= "" then return xdg .. "/diffuse" end
  return "build/cache"
end
M.default_cache_dir = default_cache_dir

-- stats -> file; atomic (safetensors.save writes a temporary file and renames it).
local function save_stats(path, s, meta)
  local mu, mu_lo = K.f64_split(s.mu64, { s.d })
  local sigma, sigma_lo = K.f64_split(s.sigma64, { s.d, s.d })
  local m = { format = STATS_FORMAT, n = tostring(s.n), d = tostring(s.d) }
  for k, v in pairs(meta) do m[k] = v end
  return core.safetensors.save(path, { mu = mu, mu_lo = mu_lo, sigma = sigma, sigma_lo = sigma_lo }, m)
end

-- file -> stats, or nil and why.
local function load_stats(path)
  local t, meta = core.safetensors.load(path)
  if not t then return nil, meta end
  if meta.format ~= STATS_FORMAT or not (t.mu and t.mu_lo and t.sigma and t.sigma_lo) then
    return nil, path .. ": not a diffuse statistics file"
  end
  local d = t.mu:numel()
  if t.sigma:numel() ~= d * d then return nil, path .. ": inconsistent shapes" end
  local s = make_stats(K.f64_join(t.mu, t.mu_lo), K.f64_join(t.sigma, t.sigma_lo), tonumber(meta.n), d)
  return s, meta
end

M.save_stats = function(path, s, meta)
  s = as_stats("save_stats", "stats", s, 2)
  return save_stats(path, s, meta or {})
end
M.load_stats = load_stats

local ref_options = { dir = true, version = true, batch = true, refresh = true }

function M.reference_stats(name, feature_fn, data_fn, opts)
  local F = "reference_stats"
  opts = check_options(F, opts, ref_options, 2)
  if type(name) ~= "string" or not name:match("^[%w_%.%-]+$") then
    fail(F, ("name must be a non-empty string of letters, digits, '_', '-', '.', got %s"):format(tostring(name)), 2)
  end
  if type(data_fn) ~= "function" and not is_tensor(data_fn) then
    fail(F, "data_fn must be a function returning a tensor (or a tensor)", 2)
  end
  local version = opts.version or "1"
  if type(version) ~= "string" then fail(F, "version must be a string", 2) end
  local dir = opts.dir or default_cache_dir()
  if type(dir) ~= "string" then fail(F, "dir must be a string", 2) end
  local path = dir .. "/" .. name .. ".stats.safetensors"
  if not opts.refresh then
    local s, meta = load_stats(path)
    if s and meta.name == name and meta.version == version then
      s.cached, s.path, s.version = true, path, version
      return s
    end
  end
  local data = data_fn
  if type(data_fn) == "function" then data = data_fn() end
  if not is_tensor(data) then fail(F, ("data_fn must return a tensor, got %s"):format(type(data)), 2) end
  local feats = M.features(feature_fn, data, { batch = opts.batch })
  local s = M.stats(feats)
  local ok, err = K.mkdir_p(dir)
  if ok then ok, err = save_stats(path, s, { name = name, version = version }) end
  if not ok then
    s.save_error = err -- the statistics are still good; only caching failed
  end
  s.cached, s.path, s.version = false, path, version
  return s
end

local floor_options = { seed = true, batch = true }

function M.floor(feature_fn, data, opts)
  local F = "floor"
  opts = check_options(F, opts, floor_options, 2)
  local feats = M.features(feature_fn, data, { batch = opts.batch })
  local n = feats:size(1)
  if n < 4 then fail(F, ("need at least 4 rows to split in halves, got %d"):format(n), 2) end
  local seed = check_int(F, "seed", opts.seed or 0, nil, 2)
  local perm = permutation(n, seed, 0)
  local h = n // 2
  local i1, i2 = {}, {}
  for i = 1, h do i1[i] = perm[i] end
  for i = h + 1, 2 * h do i2[#i2 + 1] = perm[i] end
  local fd, info = M.frechet_distance(feats:gather(i1), feats:gather(i2))
  info.n1, info.n2 = h, h
  return fd, info
end

----------------------------------------------------------------------------------------------
-- The Fashion-MNIST measurement every script shares

-- fashion_reference() -> {classifier, features, test, reference, fd}: the shipped classifier
-- (or nil, message when it is missing), its feature map for (N, 784) or (N, 1, 28, 28) images,
-- the test split, the test set's feature statistics (cached on disk, keyed by the classifier's
-- weights) and fd(x) = the Fréchet distance of a batch against them.
function M.fashion_reference()
  local models, data = require("diffuse.models"), require("diffuse.data")
  local classifier, err = models.load("fashion-classifier")
  if not classifier then return nil, err end
  local test, derr = data.fashion_mnist{ split = "test" }
  if not test then return nil, derr end
  local function features(x) return classifier:features(x:reshape(#x, 1, 28, 28)) end
  local reference = M.reference_stats("fashion-test", features, function() return test.images end,
    { version = models.fingerprint(classifier) })
  return { classifier = classifier, features = features, test = test, reference = reference,
    fd = function(x) return M.frechet_distance(M.stats(features(x)), reference) end }
end

return M
