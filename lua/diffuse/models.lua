-- Exact models: the Gaussian mixture, the empirical-data denoiser and the Gaussian approximation
-- of a data set, all predicting x0 (the posterior mean E[x0 | x_t]); conversions between
-- prediction kinds; user functions as models.
--
-- A model is callable as model(x, point, cond) -> tensor and declares model.predicts.  x is
-- (N, D) or (N, C, H, W) (flattened to (N, C*H*W) inside; the output has x's shape); point
-- carries alpha and sigma (x = alpha x0 + sigma eps).  The kernels work with alpha and sigma
-- directly, which is the sigma-space formula with xh = x / alpha, s = sigma / alpha, and stays
-- defined at alpha = 0 (the prior mean) and sigma = 0 (x itself, or the nearest data row).
local core = require("diffuse.core")
local predict = require("diffuse.predict")

local K = core._models
local M = {}

local inf = math.huge
local LOG_2PI = math.log(2 * math.pi)

local util = require("diffuse.util")
local is_tensor, shape_str, fail, sorted_keys, check_options =
  util.is_tensor, util.shape_str, util.fail, util.sorted_keys, util.check_options

-- A list of numbers from a Lua list or a 1-d tensor.
local function number_list(fname, name, v, level)
  if is_tensor(v) then
    if v:dim() ~= 1 then fail(fname, ("%s must be a list or a 1-d tensor, got %s"):format(name, shape_str(v)), level + 1) end
    return v:totable()
  end
  if type(v) ~= "table" then fail(fname, ("%s must be a list of numbers, got %s"):format(name, type(v)), level + 1) end
  for i = 1, #v do
    if type(v[i]) ~= "number" then
      fail(fname, ("%s[%d] must be a number, got %s"):format(name, i, type(v[i])), level + 1)
    end
  end
  return v
end

-- A 2-d float tensor from a tensor or a nested table.
local function matrix(fname, name, v, level)
  if type(v) == "table" and not is_tensor(v) then
    local ok, t = pcall(core.tensor, v)
    if not ok then fail(fname, ("%s: %s"):format(name, tostring(t)), level + 1) end
    v = t
  end
  if not is_tensor(v) then fail(fname, ("%s must be a tensor or a nested table, got %s"):format(name, type(v)), level + 1) end
  if v:dim() ~= 2 then fail(fname, ("%s must be 2-d (K, D), got %s"):format(name, shape_str(v)), level + 1) end
  return v:contiguous()
end

-- Checks the point and returns alpha, sigma.
local function point_values(fname, p, level)
  if type(p) ~= "table" then fail(fname, "point must be a table with alpha and sigma", level + 1) end
  local a, s = p.alpha, p.sigma
  if type(a) ~= "number" or type(s) ~= "number" then
    fail(fname, "point must have numeric alpha and sigma", level + 1)
  end
  if not (a >= 0 and s >= 0 and a < inf and s < inf) or (a == 0 and s == 0) then
    fail(fname, ("bad point: alpha = %g, sigma = %g (finite, >= 0, not both 0)"):format(a, s), level + 1)
  end
  return a, s
end

-- x as a contiguous (N, D) tensor, checking D.
local function flat_input(fname, x, D, level)
  if not is_tensor(x) then fail(fname, ("x must be a tensor, got %s"):format(type(x)), level + 1) end
  if x:dim() < 2 then
    fail(fname, ("x is %s, expected (N, %d) or (N, C, H, W) with C*H*W = %d"):format(shape_str(x), D, D), level + 1)
  end
  local n = x:size(1)
  local d = x:numel() // math.max(n, 1)
  if n > 0 and d ~= D or n == 0 and x:dim() == 2 and x:size(2) ~= D then
    fail(fname, ("x is %s, expected (N, %d) or (N, C, H, W) with C*H*W = %d"):format(shape_str(x), D, D), level + 1)
  end
  if x:dim() == 2 then return x:contiguous() end
  return x:reshape(n, D)
end

local function restore(out, x)
  if x:dim() == 2 then return out end
  return out:view(x:shape())
end

local function label_list(labels)
  local s = {}
  for i, l in ipairs(labels) do s[i] = tostring(l) end
  return table.concat(s, ", ")
end

----------------------------------------------------------------------------------------------
-- Gaussian mixture

local GMM = {}
GMM.__index = GMM
M.GMM = GMM

local gmm_options = { means = true, stds = true, vars = true, weights = true, labels = true }

function M.gmm(o)
  local F = "gmm"
  check_options(F, o, gmm_options, 2)
  if o == nil or o.means == nil then fail(F, "'means' is required: a (K, D) tensor or nested table", 2) end
  local means = matrix(F, "means", o.means, 2)
  local Kc, D = means:size(1), means:size(2)
  if Kc < 1 or D < 1 then fail(F, ("means is %s: need at least one component and one dimension"):format(shape_str(means)), 2) end
  local vars
  if o.stds ~= nil and o.vars ~= nil then fail(F, "give either 'stds' (isotropic) or 'vars' (diagonal), not both", 2) end
  if o.stds ~= nil then
    local stds = o.stds
    if type(stds) == "number" then
      stds = {}
      for k = 1, Kc do stds[k] = o.stds end
    end
    stds = number_list(F, "stds", stds, 2)
    if #stds ~= Kc then
      fail(F, ("shape mismatch: means is %s (K = %d) but stds has %d entries"):format(shape_str(means), Kc, #stds), 2)
    end
    local rows = {}
    for k = 1, Kc do
      local s = stds[k]
      if not (s > 0 and s < inf) then fail(F, ("stds[%d] must be a positive finite number, got %g"):format(k, s), 2) end
      local r = {}
      for j = 1, D do r[j] = s * s end
      rows[k] = r
    end
    vars = core.tensor(rows)
  elseif o.vars ~= nil then
    vars = matrix(F, "vars", o.vars, 2)
    if vars:size(1) ~= Kc or vars:size(2) ~= D then
      fail(F, ("shape mismatch: means is %s but vars is %s"):format(shape_str(means), shape_str(vars)), 2)
    end
    local mn = vars:min()
    if not (mn > 0) or not (vars:max() < inf) then
      fail(F, ("every variance must be positive and finite (smallest is %g)"):format(mn), 2)
    end
  else
    fail(F, "give 'stds' (K numbers, isotropic) or 'vars' ((K, D), diagonal)", 2)
  end
  local w = {}
  if o.weights ~= nil then
    local ws = number_list(F, "weights", o.weights, 2)
    if #ws ~= Kc then
      fail(F, ("shape mismatch: means is %s (K = %d) but weights has %d entries"):format(shape_str(means), Kc, #ws), 2)
    end
    local tot = 0
    for k = 1, Kc do
      if not (ws[k] >= 0 and ws[k] < inf) then fail(F, ("weights[%d] must be >= 0 and finite, got %g"):format(k, ws[k]), 2) end
      tot = tot + ws[k]
    end
    if not (tot > 0) then fail(F, "weights must not all be 0", 2) end
    for k = 1, Kc do w[k] = ws[k] / tot end
  else
    for k = 1, Kc do w[k] = 1 / Kc end
  end

  local self = setmetatable({ predicts = "x0", means = means, vars = vars, weights = w, K = Kc, D = D,
    isotropic = o.stds ~= nil }, GMM)
  -- log-weight groups: group 1 = the whole mixture, group 1 + c = class classes[c]
  local logw = {}
  for k = 1, Kc do logw[k] = w[k] > 0 and math.log(w[k]) or -inf end
  self._groups = { logw }
  self._group_of = {}
  if o.labels ~= nil then
    local labels = number_list(F, "labels", o.labels, 2)
    if #labels ~= Kc then
      fail(F, ("shape mismatch: means is %s (K = %d) but labels has %d entries"):format(shape_str(means), Kc, #labels), 2)
    end
    local seen, classes = {}, {}
    for k = 1, Kc do
      local l = labels[k]
      if math.type(l) ~= "integer" then
        if l == math.floor(l) then l = math.tointeger(l) else fail(F, ("labels[%d] must be an integer, got %g"):format(k, l), 2) end
      end
      labels[k] = l
      if not seen[l] then seen[l] = true; classes[#classes + 1] = l end
    end
    table.sort(classes)
    self.labels, self.classes = labels, classes
    for c, l in ipairs(classes) do
      local tot = 0
      for k = 1, Kc do if labels[k] == l then tot = tot + w[k] end end
      if not (tot > 0) then fail(F, ("class %d has total weight 0"):format(l), 2) end
      local g = {}
      for k = 1, Kc do g[k] = (labels[k] == l and w[k] > 0) and math.log(w[k] / tot) or -inf end
      self._groups[c + 1] = g
      self._group_of[l] = c + 1
    end
  end
  local flat = {}
  for _, g in ipairs(self._groups) do for k = 1, Kc do flat[#flat + 1] = g[k] end end
  self._logw_all = flat
  return self
end

-- The group of one label (1 = whole mixture).
function GMM:_group(fname, label, level)
  if label == nil then return 1 end
  if not self.labels then
    fail(fname, "cond given but the mixture has no labels (build it with labels = {...})", level + 1)
  end
  local g = type(label) == "number" and self._group_of[math.tointeger(label) or label]
  if not g then
    fail(fname, ("unknown cond label %s (labels: %s)"):format(tostring(label), label_list(self.classes)), level + 1)
  end
  return g
end

-- (logw list, group list or nil) for cond given as nil, a label, or one label per row.
function GMM:_cond(fname, cond, n, level)
  if cond == nil or type(cond) == "number" then
    local g = self:_group(fname, cond, level + 1)
    if g == 1 then return self._groups[1], nil end
    return self._groups[g], nil
  end
  local list
  if is_tensor(cond) then
    if cond:dim() ~= 1 then fail(fname, ("cond tensor must be 1-d (one label per row), got %s"):format(shape_str(cond)), level + 1) end
    list = cond:totable()
  elseif type(cond) == "table" then
    list = cond
  else
    fail(fname, ("cond must be nil, a label, or a list of labels, got %s"):format(type(cond)), level + 1)
  end
  -- A row whose label is nil is unconditional (the whole mixture); such a list says its
  -- length in list.n (as table.pack does), so one call can mix conditional and
  -- unconditional rows (classifier-free guidance batches).
  local count = type(cond) == "table" and not is_tensor(cond) and cond.n or #list
  if count ~= n then
    fail(fname, ("cond lists %d labels but x has %d rows"):format(count, n), level + 1)
  end
  local groups = {}
  for i = 1, n do groups[i] = self:_group(fname, list[i], level + 1) end
  return self._logw_all, groups
end

function GMM:_posterior(fname, x, a, s, cond, want_out, want_resp, want_lse, level)
  local xf = flat_input(fname, x, self.D, level + 1)
  local logw, groups = self:_cond(fname, cond, xf:size(1), level + 1)
  return xf, K.gmm_posterior(xf, self.means, self.vars, logw, groups, a, s, want_out, want_resp, want_lse, self._path)
end

function GMM:__call(x, p, cond)
  local a, s = point_values("gmm", p, 2)
  local _, out = self:_posterior("gmm", x, a, s, cond, true, false, false, 2)
  return restore(out, x)
end

-- log p(x) of x as data (t = 0), or of x_t at opts.point; opts.cond restricts to a class.
function GMM:log_prob(x, opts)
  opts = check_options("gmm:log_prob", opts, { cond = true, point = true }, 2)
  local a, s = 1, 0
  if opts.point ~= nil then a, s = point_values("gmm:log_prob", opts.point, 2) end
  local _, _, _, lse = self:_posterior("gmm:log_prob", x, a, s, opts.cond, false, false, true, 2)
  return lse
end

-- grad_x log p_t(x) = (alpha E[x0 | x] - x) / sigma^2.
function GMM:score(x, p, cond)
  local a, s = point_values("gmm:score", p, 2)
  if s == 0 then fail("gmm:score", "the score at sigma = 0 needs sigma > 0 (use log_prob's gradient at t = 0)", 2) end
  local d = self(x, p, cond)
  return core.lincomb({ d, x }, { a / (s * s), -1 / (s * s) })
end

-- p(y | x_t) for every class: an (N, C) tensor whose column c is classes[c]; returns it and
-- the list of classes.
function GMM:class_prob(x, p)
  if not self.labels then fail("gmm:class_prob", "the mixture has no labels", 2) end
  local a, s = point_values("gmm:class_prob", p, 2)
  local _, _, resp = self:_posterior("gmm:class_prob", x, a, s, nil, false, true, false, 2)
  if not self._onehot then
    local rows = {}
    for k = 1, self.K do
      local r = {}
      for c, l in ipairs(self.classes) do r[c] = self.labels[k] == l and 1 or 0 end
      rows[k] = r
    end
    self._onehot = core.tensor(rows)
  end
  return resp:matmul(self._onehot), self.classes
end

-- p(component | x_t): an (N, K) tensor.
function GMM:responsibilities(x, p, cond)
  local a, s = point_values("gmm:responsibilities", p, 2)
  local _, _, resp = self:_posterior("gmm:responsibilities", x, a, s, cond, false, true, false, 2)
  return resp
end

-- n exact samples of x0 ~ mixture (or the class cond's sub-mixture; cond may list one label
-- per sample).  Component choice uses rand(draw 0), the Gaussian noise randn(draw 1), both from
-- seed (so sample i depends only on seed and i).  Returns x (n, D) and the component of each row.
function GMM:sample(n, opts)
  local F = "gmm:sample"
  if math.type(n) ~= "integer" or n < 0 then fail(F, ("n must be a non-negative integer, got %s"):format(tostring(n)), 2) end
  opts = check_options(F, opts, { seed = true, cond = true, offset = true }, 2)
  local seed, offset = opts.seed or 0, opts.offset or 0
  local logw, groups = self:_cond(F, opts.cond, n, 2)
  local Kc = self.K
  local u = core.rand({ math.max(n, 1), 1 }, { seed = seed, offset = offset, draw = 0 })
  local comp = {}
  for i = 1, n do
    local base = groups and (groups[i] - 1) * Kc or 0
    local r, acc, pick = u:get(i, 1), 0, nil
    for k = 1, Kc do
      local lw = logw[base + k]
      if lw > -inf then
        acc = acc + math.exp(lw)
        pick = k
        if r < acc then break end
      end
    end
    comp[i] = pick
  end
  if n == 0 then return core.zeros(0, self.D), comp end
  local z = core.randn({ n, self.D }, { seed = seed, offset = offset, draw = 1 })
  local x = self.means:gather(comp):add_(z:mul_(self.vars:gather(comp):sqrt_()))
  return x, comp
end

function GMM:__tostring()
  return ("diffuse gmm: K = %d, D = %d, %s%s"):format(self.K, self.D, self.isotropic and "isotropic" or "diagonal",
    self.labels and (", classes " .. label_list(self.classes)) or "")
end

----------------------------------------------------------------------------------------------
-- Empirical-data denoiser

local Empirical = {}
Empirical.__index = Empirical
M.Empirical = Empirical

local DEFAULT_BLOCK = 2 ^ 16 -- floats of the (N x chunk) weight block when chunk is not given (L2-sized)

-- |row|^2 of every row of a contiguous (M, D) tensor, by blocks (no (M, D) temporary).
local function row_norms2(data)
  local m = data:size(1)
  local out = core.zeros(m)
  local step = 4096
  for s = 1, m, step do
    local c = math.min(step, m - s + 1)
    out:narrow(1, s, c):copy_(data:narrow(1, s, c):square():sum(2))
  end
  return out
end

function M.empirical(data, opts)
  local F = "empirical"
  if not is_tensor(data) then fail(F, ("data must be a tensor (M, ...), got %s"):format(type(data)), 2) end
  opts = check_options(F, opts, { chunk = true, labels = true }, 2)
  if data:dim() < 2 then fail(F, ("data must be (M, D) or (M, C, H, W), got %s"):format(shape_str(data)), 2) end
  local m = data:size(1)
  if m < 1 then fail(F, "data has no rows", 2) end
  local D = data:numel() // m
  if D < 1 then fail(F, ("data rows are empty: %s"):format(shape_str(data)), 2) end
  local chunk = opts.chunk
  if chunk ~= nil and (math.type(chunk) ~= "integer" or chunk < 1) then
    fail(F, ("chunk must be a positive integer, got %s"):format(tostring(chunk)), 2)
  end
  local flat = data:dim() == 2 and data:contiguous() or data:reshape(m, D)
  local self = setmetatable({ predicts = "x0", data = flat, M = m, D = D, chunk = chunk,
    item_shape = data:shape() }, Empirical)
  self.norms2 = row_norms2(flat)
  if opts.labels ~= nil then
    local labels = number_list(F, "labels", opts.labels, 2)
    if #labels ~= m then fail(F, ("labels has %d entries, data has %d rows"):format(#labels, m), 2) end
    local rows, classes = {}, {}
    for i = 1, m do
      local l = math.tointeger(labels[i])
      if not l then fail(F, ("labels[%d] must be an integer, got %s"):format(i, tostring(labels[i])), 2) end
      if not rows[l] then rows[l] = {}; classes[#classes + 1] = l end
      local r = rows[l]
      r[#r + 1] = i
    end
    table.sort(classes)
    self.labels, self.classes, self._rows, self._sub = labels, classes, rows, {}
  end
  return self
end

-- The sub-model of one class (built once).
function Empirical:_class(label, level)
  if not self.labels then
    fail("empirical", "cond given but the model has no labels (build it with {labels = ...})", level + 1)
  end
  local l = type(label) == "number" and math.tointeger(label)
  if not l or not self._rows[l] then
    fail("empirical", ("unknown cond label %s (labels: %s)"):format(tostring(label), label_list(self.classes)), level + 1)
  end
  local sub = self._sub[l]
  if not sub then
    local d = self.data:gather(self._rows[l])
    sub = setmetatable({ predicts = "x0", data = d, M = #d, D = self.D, chunk = self.chunk,
      norms2 = self.norms2:gather(self._rows[l]) }, Empirical)
    self._sub[l] = sub
  end
  return sub
end

function Empirical:_denoise(xf, a, s)
  local n = xf:size(1)
  local chunk = self.chunk or math.max(256, DEFAULT_BLOCK // math.max(n, 1))
  return K.empirical(xf, self.data, self.norms2, a, s, math.min(chunk, self.M))
end

function Empirical:__call(x, p, cond)
  local a, s = point_values("empirical", p, 2)
  local xf = flat_input("empirical", x, self.D, 2)
  if cond == nil then return restore(self:_denoise(xf, a, s), x) end
  if type(cond) == "number" then return restore(self:_class(cond, 2):_denoise(xf, a, s), x) end
  local list = is_tensor(cond) and cond:totable() or cond
  if type(list) ~= "table" then fail("empirical", ("cond must be nil, a label or a list of labels, got %s"):format(type(cond)), 2) end
  local n = xf:size(1)
  if #list ~= n then fail("empirical", ("cond lists %d labels but x has %d rows"):format(#list, n), 2) end
  local by, order = {}, {}
  for i = 1, n do
    local sub = self:_class(list[i], 2)
    if not by[sub] then by[sub] = {}; order[#order + 1] = sub end
    local r = by[sub]
    r[#r + 1] = i
  end
  local out = core.zeros(n, self.D)
  for _, sub in ipairs(order) do
    local rows = by[sub]
    local y = sub:_denoise(xf:gather(rows), a, s)
    for j, i in ipairs(rows) do out[i]:copy_(y[j]) end
  end
  return restore(out, x)
end

function Empirical:__tostring()
  return ("diffuse empirical model: M = %d rows, D = %d%s"):format(self.M, self.D,
    self.labels and (", classes " .. label_list(self.classes)) or "")
end

----------------------------------------------------------------------------------------------
-- Gaussian approximation

local Gaussian = {}
Gaussian.__index = Gaussian
M.Gaussian = Gaussian

-- Mean and covariance (1/M: the moments of the data set itself) of a contiguous (M, D) tensor.
local function moments(data)
  local m, D = data:size(1), data:size(2)
  local mean = data:mean(1)
  local cov = core.zeros(D, D)
  local step = 4096
  for s = 1, m, step do
    local c = math.min(step, m - s + 1)
    local y = data:narrow(1, s, c):sub(mean)
    y:matmul(y, { transa = true, alpha = 1 / m, beta = 1, out = cov })
  end
  return mean, cov
end

function M.gaussian(src)
  local F = "gaussian"
  local mean, cov
  if getmetatable(src) == GMM then
    -- The moment-matched Gaussian of a mixture: mean sum_k w_k mu_k, covariance
    -- sum_k w_k (diag(v_k) + mu_k mu_k^T) - mean mean^T (in double).
    local mu, var, w, Kc, D = src.means:totable(), src.vars:totable(), src.weights, src.K, src.D
    local m = {}
    for j = 1, D do
      local a = 0
      for k = 1, Kc do a = a + w[k] * mu[k][j] end
      m[j] = a
    end
    local c = {}
    for i = 1, D do
      c[i] = {}
      for j = 1, D do
        local a = 0
        for k = 1, Kc do a = a + w[k] * (mu[k][i] - m[i]) * (mu[k][j] - m[j]) end
        if i == j then for k = 1, Kc do a = a + w[k] * var[k][i] end end
        c[i][j] = a
      end
    end
    mean, cov = core.tensor(m), core.tensor(c)
  elseif is_tensor(src) then
    if src:dim() < 2 or src:size(1) < 1 then fail(F, ("data must be (M, D) or (M, C, H, W) with M >= 1, got %s"):format(shape_str(src)), 2) end
    local m = src:size(1)
    local flat = src:dim() == 2 and src:contiguous() or src:reshape(m, src:numel() // m)
    mean, cov = moments(flat)
  elseif type(src) == "table" then
    check_options(F, src, { mean = true, cov = true }, 2)
    if src.mean == nil or src.cov == nil then fail(F, "give a data tensor, or {mean = (D), cov = (D, D)}", 2) end
    mean = is_tensor(src.mean) and src.mean:contiguous() or core.tensor(number_list(F, "mean", src.mean, 2))
    if mean:dim() ~= 1 then fail(F, ("mean must be 1-d (D), got %s"):format(shape_str(mean)), 2) end
    cov = matrix(F, "cov", src.cov, 2)
    local D = mean:size(1)
    if cov:size(1) ~= D or cov:size(2) ~= D then
      fail(F, ("shape mismatch: mean is %s but cov is %s (expected [%dx%d])"):format(shape_str(mean), shape_str(cov), D, D), 2)
    end
    if cov:sub(cov:t()):abs():max() > 1e-5 * math.max(1, cov:abs():max()) then fail(F, "cov must be symmetric", 2) end
  else
    fail(F, ("expected a data tensor, a diffuse.models.gmm or {mean =, cov =}, got %s"):format(type(src)), 2)
  end
  if not K.has_lapack() then
    fail(F, "needs LAPACK (dsyevd) and the loaded BLAS has none: install OpenBLAS (sudo apt-get install libopenblas-dev)", 2)
  end
  local evals, U = K.eigh(cov)
  local D = mean:size(1)
  local scale = math.max(evals:abs():max(), 1e-30)
  if evals:min() < -1e-4 * scale then
    fail(F, ("cov is not positive semi-definite (smallest eigenvalue %g)"):format(evals:min()), 2)
  end
  evals:clamp_(0)
  return setmetatable({ predicts = "x0", mean = mean, cov = cov, evals = evals, U = U, D = D }, Gaussian)
end

-- (x - alpha mu) U, flattening x.
function Gaussian:_project(fname, x, a, level)
  local xf = flat_input(fname, x, self.D, level + 1)
  return xf:sub(self.mean:mul(a)):matmul(self.U)
end

-- A row of per-eigendirection factors f(l) as a (1, D) tensor.
function Gaussian:_row(f)
  local l, r = self.evals:totable(), {}
  for i = 1, #l do r[i] = f(l[i]) end
  return core.tensor({ r })
end

function Gaussian:__call(x, p)
  local a, s = point_values("gaussian", p, 2)
  local z = self:_project("gaussian", x, a, 2)
  z:mul_(self:_row(function(l)
    local den = a * a * l + s * s
    return den > 0 and a * l / den or 0
  end))
  local out = z:matmul(self.U, { transb = true }):add_(self.mean)
  return restore(out, x)
end

-- grad_x log p_t(x) = -(alpha^2 Sigma + sigma^2 I)^-1 (x - alpha mu).
function Gaussian:score(x, p)
  local a, s = point_values("gaussian:score", p, 2)
  if s == 0 and self.evals:min() <= 0 then
    fail("gaussian:score", "the covariance is singular: the score at sigma = 0 is undefined", 2)
  end
  local z = self:_project("gaussian:score", x, a, 2)
  z:mul_(self:_row(function(l) return -1 / (a * a * l + s * s) end))
  return restore(z:matmul(self.U, { transb = true }), x)
end

-- log N(x; mu, Sigma) at t = 0, or of x_t at opts.point: an (N) tensor.
function Gaussian:log_prob(x, opts)
  opts = check_options("gaussian:log_prob", opts, { point = true }, 2)
  local a, s = 1, 0
  if opts.point ~= nil then a, s = point_values("gaussian:log_prob", opts.point, 2) end
  local logdet, sing = 0, false
  for _, l in ipairs(self.evals:totable()) do
    local v = a * a * l + s * s
    if v > 0 then logdet = logdet + math.log(v) else sing = true end
  end
  if sing then fail("gaussian:log_prob", "the covariance is singular: no density at sigma = 0", 2) end
  local z = self:_project("gaussian:log_prob", x, a, 2)
  local q = z:square():mul_(self:_row(function(l) return 1 / (a * a * l + s * s) end)):sum(2)
  return q:mul_(-0.5):add_(-0.5 * (logdet + self.D * LOG_2PI))
end

-- n exact samples of N(mu, Sigma): randn(draw 0) from seed.
function Gaussian:sample(n, opts)
  if math.type(n) ~= "integer" or n < 1 then fail("gaussian:sample", "n must be a positive integer", 2) end
  opts = check_options("gaussian:sample", opts, { seed = true, offset = true }, 2)
  local z = core.randn({ n, self.D }, { seed = opts.seed or 0, offset = opts.offset or 0, draw = 0 })
  z:mul_(self:_row(math.sqrt))
  return z:matmul(self.U, { transb = true }):add_(self.mean)
end

function Gaussian:__tostring()
  return ("diffuse gaussian model: D = %d"):format(self.D)
end

----------------------------------------------------------------------------------------------
-- Conversions and user functions

M.kinds = { "eps", "x0", "v", "score", "flow" }

-- Convert a model output `out` of kind `from` at (x, point) into kind `to`.
function M.convert(out, from, to, x, p)
  local F = "convert"
  if not predict.kinds[from] then fail(F, ("unknown prediction kind '%s' (valid: eps, x0, v, score, flow)"):format(tostring(from)), 2) end
  if not predict.kinds[to] then fail(F, ("unknown prediction kind '%s' (valid: eps, x0, v, score, flow)"):format(tostring(to)), 2) end
  if not is_tensor(out) or not is_tensor(x) then fail(F, "out and x must be tensors", 2) end
  if type(p) ~= "table" or type(p.alpha) ~= "number" or type(p.sigma) ~= "number" then
    fail(F, "point must be a table with alpha and sigma", 2)
  end
  if from == to then return out end
  local ok, x0, eps = pcall(predict.to_x0_eps, from, out, x, p)
  if not ok then fail(F, (tostring(x0):gsub("^[^:]*:%d+: ", "")), 2) end
  local a, s = p.alpha, p.sigma
  if to == "x0" then return x0 end
  if eps == nil then fail(F, ("cannot convert %s to %s at sigma = 0: the noise is undefined"):format(from, to), 2) end
  if to == "eps" then return eps end
  if to == "v" then return core.lincomb({ eps, x0 }, { a, -s }) end
  if to == "score" then
    if not (s > 0) then fail(F, "the score needs sigma > 0", 2) end
    return eps:mul(-1 / s)
  end
  -- flow
  if not (p.dalpha and p.dsigma) then
    fail(F, "a flow prediction needs the schedule's derivatives (point.dalpha, point.dsigma)", 2)
  end
  return core.lincomb({ x0, eps }, { p.dalpha, p.dsigma })
end

local FnModel = {}
FnModel.__index = FnModel
-- ctx (the sampler's call context: state, skip) passes through to f, so wrapped guidance
-- objects and networks keep their per-run memory and skipped blocks.
FnModel.__call = function(self, x, p, cond, ctx) return self.f(x, p, cond, ctx) end
FnModel.__tostring = function(self) return ("diffuse model (Lua function, predicts %s)"):format(self.predicts) end

-- A Lua function f(x, point, cond) -> tensor as a model that predicts opts.predicts.
function M.fn(f, opts)
  local F = "models.fn"
  local callable = type(f) == "function" or (getmetatable(f) and getmetatable(f).__call)
  if not callable then fail(F, ("f must be a function(x, point, cond), got %s"):format(type(f)), 2) end
  opts = check_options(F, opts, { predicts = true, schedule = true }, 2)
  if opts.predicts == nil then fail(F, "say what f predicts: {predicts = 'eps' | 'x0' | 'v' | 'score' | 'flow'}", 2) end
  if not predict.kinds[opts.predicts] then
    fail(F, ("unknown prediction kind '%s' (valid: eps, x0, v, score, flow)"):format(tostring(opts.predicts)), 2)
  end
  return setmetatable({ f = f, predicts = opts.predicts, schedule = opts.schedule }, FnModel)
end

-- A model `m` seen as predicting `kind` (converted per call).
function M.as(m, kind)
  local from = type(m) == "table" and m.predicts
  if not from then fail("models.as", "the model must declare predicts (wrap functions with models.fn)", 2) end
  if not predict.kinds[kind] then fail("models.as", ("unknown prediction kind '%s'"):format(tostring(kind)), 2) end
  return M.fn(function(x, p, cond, ctx) return M.convert(m(x, p, cond, ctx), from, kind, x, p) end,
    { predicts = kind, schedule = m.schedule })
end

-- ---------------------------------------------------------------------------------------
local attach_fashion_analytic

-- Shipped models: models.load(name) finds <name>.safetensors in $DIFFUSE_MODELS (a list of
-- directories separated by ':'), next to the installed module (<lua dir>/diffuse/models/),
-- or in a source tree's models/ directory.

function M.model_dirs() return require("diffuse.util").data_dirs("DIFFUSE_MODELS", "models") end

-- "diffuse.schedule.vp_cosine{s=0.008}" -> the schedule it names.
local function schedule_from_string(text)
  local kind, args = tostring(text):match("^diffuse%.schedule%.([%w_]+){(.*)}$")
  local sched = require("diffuse.schedule")
  if not kind or type(sched[kind]) ~= "function" then return nil end
  local o = {}
  for k, v in args:gmatch("([%w_]+)=([^,]+)") do
    v = v:gsub("^%s+", ""):gsub("%s+$", "")
    if v == "true" or v == "false" then o[k] = v == "true"
    elseif tonumber(v) then o[k] = tonumber(v)
    else o[k] = v end
  end
  local ok, s = pcall(sched[kind], o)
  return ok and s or nil
end

-- A short fingerprint of a network's weights (sums of every parameter in double), for cache
-- keys: a retrained model gets new reference statistics.
function M.fingerprint(net)
  local a, b = 0, 0
  for i, p in ipairs(net:parameters()) do
    a = a + p.value:sum() * (1 + i * 1e-3)
    b = b + p.value:abs():sum()
  end
  return ("%.12g/%.12g"):format(a, b)
end

-- A class-conditional Gaussian approximation: one Gaussian per class label and one for all the
-- data; model(x, point, cond) uses each row's class (a label tensor, a list or one number),
-- and the Gaussian of all the data for rows without a known class (the null class of
-- classifier-free guidance) or without cond.
local ClassGaussian = {}
ClassGaussian.__index = ClassGaussian
M.ClassGaussian = ClassGaussian

function ClassGaussian:__call(x, p, cond)
  if cond == nil then return self.all(x, p) end
  local F = "class gaussian"
  local xf = flat_input(F, x, self.D, 2)
  local n = xf:size(1)
  local labels
  if is_tensor(cond) then labels = cond:totable()
  elseif type(cond) == "number" then
    labels = {}
    for i = 1, n do labels[i] = cond end
  elseif type(cond) == "table" then labels = cond
  else fail(F, ("cond must be a label tensor, a list or a number, got %s"):format(type(cond)), 2) end
  if #labels ~= n then fail(F, ("cond has %d labels for %d rows"):format(#labels, n), 2) end
  local groups, order = {}, {}
  for i, l in ipairs(labels) do
    local k = math.tointeger(l)
    if k == nil or self.classes[k] == nil then k = "all" end
    if not groups[k] then groups[k] = {}; order[#order + 1] = k end
    local g = groups[k]
    g[#g + 1] = i
  end
  if #order == 1 then
    local g = order[1] == "all" and self.all or self.classes[order[1]]
    return g(x, p)
  end
  -- each group's rows in turn, then back to the original order with one gather
  local sorted = core.zeros(n, self.D)
  local inv, pos = {}, 1
  for _, k in ipairs(order) do
    local rows = groups[k]
    local g = k == "all" and self.all or self.classes[k]
    sorted:narrow(1, pos, #rows):copy_(g(xf:gather(rows), p))
    for r, i in ipairs(rows) do inv[i] = pos + r - 1 end
    pos = pos + #rows
  end
  return restore(sorted:gather(inv), x)
end

function ClassGaussian:__tostring()
  local n = 0
  for _ in pairs(self.classes) do n = n + 1 end
  return ("diffuse class-conditional gaussian model: D = %d, %d classes"):format(self.D, n)
end

-- A Gaussian from a decomposition already at hand (a cache), without diagonalising again.
local function gaussian_from(mean, cov, evals, U)
  return setmetatable({ predicts = "x0", mean = mean, cov = cov, evals = evals, U = U, D = mean:size(1) }, Gaussian)
end

-- The Gaussian approximation of the Fashion-MNIST training images as the shipped denoiser
-- saw them ((N, 784) in [-1, 1]), per class and for all images: the analytic first step of
-- plans (docs/plans.md).  The moments and eigendecompositions take about 5 s over 60000
-- images, so they are cached on disk (next to the metrics' reference statistics, about 50 MB)
-- and the loaded model's `analytic` field is only built when first read.
M.fashion_gaussian_cache = "fashion-train-gaussians.safetensors"
local GAUSS_FORMAT = "diffuse-class-gaussians-1"
function M.fashion_gaussian(opts)
  opts = check_options("fashion_gaussian", opts, { dir = true, refresh = true }, 2)
  local metrics = require("diffuse.metrics")
  local dir = opts.dir or metrics.default_cache_dir()
  local path = dir .. "/" .. M.fashion_gaussian_cache
  local names = { "all" }
  for c = 0, 9 do names[#names + 1] = tostring(c) end
  local function build(t)
    local out = setmetatable({ predicts = "x0", classes = {}, D = 784 }, ClassGaussian)
    for _, k in ipairs(names) do
      local g = gaussian_from(t["mean_" .. k], t["cov_" .. k], t["evals_" .. k], t["U_" .. k])
      if k == "all" then out.all = g else out.classes[tonumber(k)] = g end
    end
    out.mean = out.all.mean
    return out
  end
  if not opts.refresh then
    local t, meta = core.safetensors.load(path)
    if t and meta and meta.format == GAUSS_FORMAT then
      local ok = true
      for _, k in ipairs(names) do
        for _, f in ipairs({ "mean_", "cov_", "evals_", "U_" }) do ok = ok and t[f .. k] ~= nil end
      end
      if ok then return build(t) end
    end
  end
  local data = require("diffuse.data")
  local d, err = data.fashion_mnist { split = "train" }
  if not d then fail("fashion_gaussian", err, 2) end
  local n = d.images:size(1)
  local flat = d.images:reshape(n, d.images:numel() // n)
  local rows = {}
  for i, l in ipairs(d.labels) do
    local k = tostring(l)
    rows[k] = rows[k] or {}
    table.insert(rows[k], i)
  end
  local t = {}
  for _, k in ipairs(names) do
    local g
    if k == "all" then g = M.gaussian(flat)
    else
      if not rows[k] then fail("fashion_gaussian", "the training set has no image of class " .. k, 2) end
      g = M.gaussian(flat:gather(rows[k]))
    end
    t["mean_" .. k], t["cov_" .. k], t["evals_" .. k], t["U_" .. k] = g.mean, g.cov, g.evals, g.U
  end
  -- caching is best effort: the statistics are good even when the directory is read-only
  if core._metrics.mkdir_p(dir) then
    core.safetensors.save(path, t, { format = GAUSS_FORMAT, data = "fashion-mnist train" })
  end
  return build(t)
end

attach_fashion_analytic = function(model)
  local base = getmetatable(model)
  local mt = {}
  for k, v in pairs(base) do mt[k] = v end
  local index = base.__index
  mt.__index = function(t, k)
    if k == "analytic" then
      local g = M.fashion_gaussian()
      rawset(t, "analytic", g)
      return g
    end
    if type(index) == "function" then return index(t, k) end
    return index[k]
  end
  setmetatable(model, mt)
end

-- models.load(name) -> model, info  (or nil, message when no file is found or it is bad).
-- A denoiser comes back ready for diffuse.sample (it declares what it predicts and carries
-- its schedule); a classifier comes back as its network.  info = {net, metadata, path, kind}.
function M.load(name)
  if type(name) ~= "string" or name == "" then fail("models.load", "name must be a non-empty string", 2) end
  local nn = require("diffuse.nn")
  local tried = {}
  for _, dir in ipairs(M.model_dirs()) do
    local path = ("%s/%s.safetensors"):format(dir, name)
    local f = io.open(path, "rb")
    if f then
      f:close()
      local net, md = nn.load(path)
      if not net then return nil, md end
      local info = { net = net, metadata = md, path = path }
      -- A denoiser's file says what it was trained to predict, under which schedule.
      local predicts = md["train.objective"]
      if net._class == "ResMLP" and predicts then
        local schedule = schedule_from_string(md["train.schedule"])
        if not schedule then return nil, ("%s: the file does not name a schedule it was trained with"):format(path) end
        info.kind, info.schedule = "denoiser", schedule
        local model = nn.as_model(net, { predicts = predicts, schedule = schedule })
        local data = md["train.data"]
        if type(data) == "string" and data:match("^fashion%-mnist train") then attach_fashion_analytic(model) end
        return model, info
      end
      info.kind = "classifier"
      return net, info
    end
    tried[#tried + 1] = dir
  end
  return nil, ("no model '%s' (looked in %s; set DIFFUSE_MODELS to add directories)"):format(name,
    table.concat(tried, ", "))
end

return M
