-- diffuse.nn: layers with forward and backward passes whose arithmetic is in C (diffuse.core._nn,
-- src/nn.c), losses, AdamW, gradient clipping, EMA, and safetensors persistence with the
-- architecture in the header.  See docs/nn.md.
--
-- A module is a Lua object holding parameter records {name, value, grad}.  m:forward(...) caches
-- what backward needs when m.training is true; m:backward(grad_out) returns the gradient with
-- respect to the input and ACCUMULATES parameter gradients into p.grad.  Outputs are new tensors
-- on every call (callers may keep them); modules keep references to their inputs until the next
-- forward, so do not modify an input in place between forward and backward.
local core = require("diffuse.core")

local K = core._nn
local M = {}

-------------------------------------------------------------------------------- helpers

local util = require("diffuse.util")
local is_tensor, shape_str, fail, sorted_keys, check_options =
  util.is_tensor, util.shape_str, util.fail, util.sorted_keys, util.check_options

local function check_int(fname, name, v, lo, level)
  if type(v) ~= "number" or v ~= math.floor(v) or v < lo then
    fail(fname, ("%s must be an integer >= %d, got %s"):format(name, lo, tostring(v)), (level or 1) + 1)
  end
  return math.tointeger(v)
end

local EMPTY = setmetatable({}, { __newindex = function() error("internal: EMPTY is read-only") end })

local function dense(x) return x:is_contiguous() and x or x:contiguous() end

-- Copy of an options table (shallow copies of nested lists), so a stored architecture cannot
-- be changed behind the module's back.
local function copy_opts(t)
  if type(t) ~= "table" then return t end
  local o = {}
  for k, v in pairs(t) do o[k] = copy_opts(v) end
  return o
end

local function with_commas(n)
  local s = tostring(math.tointeger(n) or n)
  local out = s:reverse():gsub("(%d%d%d)", "%1,"):reverse()
  return (out:gsub("^,", ""))
end

-- Deterministic child seeds: seed s, child k.
local function child_seed(s, k) return (s * 1000003 + k * 7919 + 17) % 2147483647 end

-------------------------------------------------------------------------------- Module

local Module = {}
Module.__index = Module
M.Module = Module

-- Classes by name (for rebuilding from a file).
local classes = {}

local function class(name, parent)
  local c = setmetatable({}, { __index = parent or Module })
  c.__index = c
  c.__name = name
  c.__tostring = Module.__tostring
  c.__call = function(self, ...) return self:forward(...) end
  classes[name] = c
  return c
end

function Module:_setup(class_name, args)
  self._class = class_name
  self._args = args
  self.training = true
  self._params = {}
  self._children = {}
  return self
end

-- A parameter record; grad starts at zero.
function Module:_param(name, value)
  local p = { local_name = name, value = value, grad = core.zeros(value:shape()) }
  self._params[#self._params + 1] = p
  return p
end

function Module:_child(name, m)
  m._name = name
  m._parent = self
  self._children[#self._children + 1] = { name = name, module = m }
  return m
end

-- Dotted path from the root ("blocks.3.fc1"), or the class name for a root.
function Module:path()
  local parts, m = {}, self
  while m and m._name do
    table.insert(parts, 1, m._name)
    m = m._parent
  end
  return #parts > 0 and table.concat(parts, ".") or nil
end

function Module:_where()
  local p = self:path()
  return p and (p .. " (" .. self:describe() .. ")") or self:describe()
end

-- Raise "<where>: <msg>" at the caller of the public method.
function Module:_fail(msg, level) error(("%s: %s"):format(self:_where(), msg), (level or 1) + 1) end

function Module:describe() return self._class end

-- Ordered list of {name, value, grad} of this module and its children (names dotted).
function Module:parameters(out, prefix)
  out = out or {}
  prefix = prefix or ""
  for _, p in ipairs(self._params) do
    p.name = prefix .. p.local_name
    out[#out + 1] = p
  end
  for _, c in ipairs(self._children) do c.module:parameters(out, prefix .. c.name .. ".") end
  return out
end

function Module:named_modules(out, prefix)
  out = out or {}
  out[#out + 1] = { name = prefix or "", module = self }
  for _, c in ipairs(self._children) do
    c.module:named_modules(out, (prefix and prefix ~= "" and prefix .. "." or "") .. c.name)
  end
  return out
end

function Module:zero_grad()
  for _, p in ipairs(self:parameters()) do p.grad:zero_() end
  return self
end

function Module:train(on)
  local v = on ~= false
  for _, e in ipairs(self:named_modules()) do e.module.training = v end
  return self
end

function Module:eval() return self:train(false) end

function Module:num_parameters()
  local n = 0
  for _, p in ipairs(self:parameters()) do n = n + p.value:numel() end
  return n
end

-- {class = name, args = {...}}: the constructor call that rebuilds this module.
function Module:arch() return { class = self._class, args = copy_opts(self._args) } end

function Module:_need_cache(what)
  if self[what] == nil then
    self:_fail("backward needs a forward in training mode first (call m:train() before forward)", 3)
  end
  return self[what]
end

function Module.__tostring(self)
  local lines = { self:describe() }
  local total = 0
  for _, e in ipairs(self:named_modules()) do
    local m = e.module
    if #m._params > 0 then
      local shapes, n = {}, 0
      for _, p in ipairs(m._params) do
        shapes[#shapes + 1] = p.local_name .. shape_str(p.value)
        n = n + p.value:numel()
      end
      total = total + n
      lines[#lines + 1] = ("  %-22s %-34s %-40s %12s"):format(e.name ~= "" and e.name or "(self)", m:describe(),
        table.concat(shapes, " "), with_commas(n))
    elseif e.name ~= "" and #m._children == 0 then
      lines[#lines + 1] = ("  %-22s %-34s"):format(e.name, m:describe())
    end
  end
  lines[#lines + 1] = ("total parameters: %s"):format(with_commas(total))
  return table.concat(lines, "\n")
end

-- Uniform(-bound, bound) init, deterministic from the seed.
local function uniform(shape, bound, seed, draw)
  local u = core.rand(shape, { seed = seed, draw = draw or 0 })
  u:mul_(2 * bound):sub_(bound)
  return u
end

-------------------------------------------------------------------------------- Linear

local Linear = class("Linear")
M.Linear = Linear

-- Linear(in, out[, {bias = true, seed = 0, init_scale = 1}]): y = x W^T + b, W (out, in).
function Linear.new(in_f, out_f, opts)
  local F = "nn.Linear"
  in_f = check_int(F, "in_features", in_f, 1, 2)
  out_f = check_int(F, "out_features", out_f, 1, 2)
  opts = check_options(F, opts, { bias = true, seed = true, init_scale = true }, 2)
  local self = setmetatable({}, Linear):_setup("Linear", { in_f, out_f, copy_opts(opts) })
  self.in_features, self.out_features = in_f, out_f
  local seed = opts.seed or 0
  local bound = (opts.init_scale or 1) / math.sqrt(in_f)
  self.weight = self:_param("weight", uniform({ out_f, in_f }, bound, seed, 0))
  if opts.bias ~= false then self.bias = self:_param("bias", uniform({ out_f }, bound, seed, 1)) end
  return self
end

function Linear:describe() return ("Linear(%d -> %d%s)"):format(self.in_features, self.out_features, self.bias and "" or ", no bias") end

function Linear:_check(x, level)
  if not is_tensor(x) then self:_fail("input must be a tensor, got " .. type(x), level + 1) end
  if x:dim() ~= 2 or x:size(2) ~= self.in_features then
    self:_fail(("input is %s, expected (N, %d)"):format(shape_str(x), self.in_features), level + 1)
  end
  return dense(x)
end

-- forward(x[, residual]): x W^T + b (+ residual, a (N, out) tensor added in the same pass).
function Linear:forward(x, residual)
  x = self:_check(x, 2)
  if self.training then self._x = x end
  return K.linear_fwd(x, self.weight.value, self.bias and self.bias.value, residual and dense(residual))
end

-- backward(dy[, no_input_grad]) -> dx (nil when no_input_grad).
function Linear:backward(dy, no_input_grad)
  local x = self:_need_cache("_x")
  return K.linear_bwd(x, dense(dy), self.weight.value, not no_input_grad, self.weight.grad,
    self.bias and self.bias.grad)
end

-------------------------------------------------------------------------------- activations

local SiLU = class("SiLU")
M.SiLU = SiLU

function SiLU.new() return setmetatable({}, SiLU):_setup("SiLU", {}) end

function SiLU:describe() return "SiLU" end

function SiLU:forward(x)
  x = dense(x)
  if self.training then self._x = x end
  return K.film_silu_fwd(x)
end

function SiLU:backward(dy) return (K.film_silu_bwd(self:_need_cache("_x"), nil, dense(dy))) end

local GELU = class("GELU")
M.GELU = GELU

function GELU.new() return setmetatable({}, GELU):_setup("GELU", {}) end

function GELU:describe() return "GELU(tanh)" end

function GELU:forward(x)
  x = dense(x)
  if self.training then self._x = x end
  return K.gelu_fwd(x)
end

function GELU:backward(dy) return K.gelu_bwd(self:_need_cache("_x"), dense(dy)) end

-------------------------------------------------------------------------------- normalisation

local LayerNorm = class("LayerNorm")
M.LayerNorm = LayerNorm

function LayerNorm.new(dim, opts)
  local F = "nn.LayerNorm"
  dim = check_int(F, "dim", dim, 1, 2)
  opts = check_options(F, opts, { eps = true }, 2)
  local self = setmetatable({}, LayerNorm):_setup("LayerNorm", { dim, copy_opts(opts) })
  self.dim, self.eps = dim, opts.eps or 1e-5
  self.weight = self:_param("weight", core.ones(dim))
  self.bias = self:_param("bias", core.zeros(dim))
  return self
end

function LayerNorm:describe() return ("LayerNorm(%d)"):format(self.dim) end

function LayerNorm:forward(x)
  if not is_tensor(x) or x:dim() ~= 2 or x:size(2) ~= self.dim then
    self:_fail(("input is %s, expected (N, %d)"):format(is_tensor(x) and shape_str(x) or type(x), self.dim), 2)
  end
  x = dense(x)
  local y, mean, rstd = K.layernorm_fwd(x, self.weight.value, self.bias.value, self.eps)
  if self.training then self._x, self._mean, self._rstd = x, mean, rstd end
  return y
end

function LayerNorm:backward(dy, no_input_grad)
  local x = self:_need_cache("_x")
  return K.layernorm_bwd(x, dense(dy), self.weight.value, self._mean, self._rstd, not no_input_grad,
    self.weight.grad, self.bias.grad)
end

local GroupNorm = class("GroupNorm")
M.GroupNorm = GroupNorm

function GroupNorm.new(groups, channels, opts)
  local F = "nn.GroupNorm"
  groups = check_int(F, "groups", groups, 1, 2)
  channels = check_int(F, "channels", channels, 1, 2)
  if channels % groups ~= 0 then fail(F, ("groups (%d) must divide channels (%d)"):format(groups, channels), 2) end
  opts = check_options(F, opts, { eps = true }, 2)
  local self = setmetatable({}, GroupNorm):_setup("GroupNorm", { groups, channels, copy_opts(opts) })
  self.groups, self.channels, self.eps = groups, channels, opts.eps or 1e-5
  self.weight = self:_param("weight", core.ones(channels))
  self.bias = self:_param("bias", core.zeros(channels))
  return self
end

function GroupNorm:describe() return ("GroupNorm(%d, %d)"):format(self.groups, self.channels) end

function GroupNorm:forward(x)
  if not is_tensor(x) or x:dim() < 2 or x:size(2) ~= self.channels then
    self:_fail(("input is %s, expected (N, %d, ...)"):format(is_tensor(x) and shape_str(x) or type(x), self.channels), 2)
  end
  x = dense(x)
  local y, mean, rstd = K.groupnorm_fwd(x, self.groups, self.weight.value, self.bias.value, self.eps)
  if self.training then self._x, self._mean, self._rstd = x, mean, rstd end
  return y
end

function GroupNorm:backward(dy, no_input_grad)
  local x = self:_need_cache("_x")
  return K.groupnorm_bwd(x, dense(dy), self.groups, self.weight.value, self._mean, self._rstd, not no_input_grad,
    self.weight.grad, self.bias.grad)
end

-------------------------------------------------------------------------------- Dropout

local Dropout = class("Dropout")
M.Dropout = Dropout

-- Dropout(p[, {seed = 0}]): the mask of training call k (k = self.step, counted from 0) comes
-- from Philox (seed, row, draw k): deterministic, independent of batch size and position.
function Dropout.new(p, opts)
  local F = "nn.Dropout"
  if type(p) ~= "number" or not (p >= 0 and p < 1) then fail(F, "p must be a number in [0, 1), got " .. tostring(p), 2) end
  opts = check_options(F, opts, { seed = true }, 2)
  local self = setmetatable({}, Dropout):_setup("Dropout", { p, copy_opts(opts) })
  self.p, self.seed, self.step = p, opts.seed or 0, 0
  return self
end

function Dropout:describe() return ("Dropout(%g)"):format(self.p) end

-- In eval mode, or with p = 0, returns x itself.
function Dropout:forward(x)
  self._draw = false
  if not self.training or self.p == 0 then return x end
  self._draw = self.step
  self.step = self.step + 1
  return K.dropout(dense(x), self.p, self.seed, self._draw)
end

function Dropout:backward(dy)
  if self._draw == nil then self:_fail("backward needs a forward first", 2) end
  if self._draw == false then return dy end
  return K.dropout(dense(dy), self.p, self.seed, self._draw)
end

-------------------------------------------------------------------------------- embeddings

local Sinusoidal = class("SinusoidalEmbedding")
M.SinusoidalEmbedding = Sinusoidal

-- SinusoidalEmbedding(dim[, {max_period = 10000, scale = 1}]): t (N) -> (N, dim) =
-- [cos(scale t f_k) | sin(scale t f_k)], f_k = max_period^(-k / (dim/2)).  No parameters.
function Sinusoidal.new(dim, opts)
  local F = "nn.SinusoidalEmbedding"
  dim = check_int(F, "dim", dim, 1, 2)
  opts = check_options(F, opts, { max_period = true, scale = true }, 2)
  local self = setmetatable({}, Sinusoidal):_setup("SinusoidalEmbedding", { dim, copy_opts(opts) })
  self.dim, self.max_period, self.scale = dim, opts.max_period or 10000, opts.scale or 1
  return self
end

function Sinusoidal:describe() return ("SinusoidalEmbedding(%d)"):format(self.dim) end

-- t: a 1-d tensor, a list of numbers, or a number with n (the batch size).
local function time_tensor(where, t, n, level)
  if type(t) == "number" then
    if not n then error(where .. ": a number t needs the batch size", level + 1) end
    return core.full({ n }, t)
  elseif type(t) == "table" and not is_tensor(t) then
    t = core.tensor(t)
  end
  if not is_tensor(t) then error(where .. ": t must be a number, a list or a 1-d tensor, got " .. type(t), level + 1) end
  if t:dim() == 2 and t:size(2) == 1 then t = t:reshape(-1) end
  if t:dim() ~= 1 or (n and t:size(1) ~= n) then
    error(("%s: t is %s, expected (%s)"):format(where, shape_str(t), n and tostring(n) or "N"), level + 1)
  end
  return dense(t)
end

function Sinusoidal:forward(t, n)
  t = time_tensor(self:_where(), t, n, 2)
  if self.scale ~= 1 then t = t:mul(self.scale) end
  return K.sinusoidal(t, self.dim, self.max_period)
end

function Sinusoidal:backward() return nil end

local ClassEmbedding = class("ClassEmbedding")
M.ClassEmbedding = ClassEmbedding

-- ClassEmbedding(num_classes, dim[, {dropout = 0, seed = 0}]): labels 0 .. num_classes-1, and
-- the null class num_classes (unconditional, for classifier-free guidance).  In training, each
-- label is replaced by the null class with probability dropout (Philox: seed, row, call).
function ClassEmbedding.new(num_classes, dim, opts)
  local F = "nn.ClassEmbedding"
  num_classes = check_int(F, "num_classes", num_classes, 1, 2)
  dim = check_int(F, "dim", dim, 1, 2)
  opts = check_options(F, opts, { dropout = true, seed = true }, 2)
  local p = opts.dropout or 0
  if type(p) ~= "number" or not (p >= 0 and p <= 1) then fail(F, "dropout must be in [0, 1]", 2) end
  local self = setmetatable({}, ClassEmbedding):_setup("ClassEmbedding", { num_classes, dim, copy_opts(opts) })
  self.num_classes, self.dim, self.null, self.dropout = num_classes, dim, num_classes, p
  self.seed, self.step = opts.seed or 0, 0
  self.weight = self:_param("weight", core.randn({ num_classes + 1, dim }, { seed = self.seed, draw = 0 }))
  return self
end

function ClassEmbedding:describe() return ("ClassEmbedding(%d + null, %d)"):format(self.num_classes, self.dim) end

-- Labels as a 1-d float tensor: nil (all null, needs n), a number (all that label), a list or
-- a tensor.  Values must be integers in 0 .. num_classes (the last is the null class).
function ClassEmbedding:labels(labels, n, level)
  level = (level or 1) + 1
  if labels == nil then
    if not n then self:_fail("nil labels need the batch size", level) end
    return core.full({ n }, self.null)
  elseif type(labels) == "number" then
    if not n then self:_fail("a number label needs the batch size", level) end
    labels = core.full({ n }, labels)
  elseif type(labels) == "table" and not is_tensor(labels) then
    labels = core.tensor(labels)
  end
  if not is_tensor(labels) or labels:dim() ~= 1 or (n and labels:size(1) ~= n) then
    self:_fail(("labels are %s, expected a list or 1-d tensor of %s labels"):format(
      is_tensor(labels) and shape_str(labels) or type(labels), n and tostring(n) or "N"), level)
  end
  local lo, hi = labels:min(), labels:max()
  if labels:numel() > 0 and (lo < 0 or hi > self.null) then
    self:_fail(("labels must be in 0 .. %d (%d is the null class), got values in [%g, %g]"):format(
      self.null, self.null, lo, hi), level)
  end
  return dense(labels)
end

function ClassEmbedding:forward(labels, n)
  labels = self:labels(labels, n, 2)
  if self.training and self.dropout > 0 then
    labels = K.drop_labels(labels, self.dropout, self.seed, self.step, self.null)
    self.step = self.step + 1
  end
  if self.training then self._labels = labels end
  return K.embedding_fwd(self.weight.value, labels)
end

function ClassEmbedding:backward(dout)
  K.embedding_bwd(self:_need_cache("_labels"), dense(dout), self.weight.grad)
  return nil
end

-------------------------------------------------------------------------------- Conv2d, pooling

local Conv2d = class("Conv2d")
M.Conv2d = Conv2d

-- Conv2d(in, out, k[, {stride = 1, padding = 0, bias = true, seed = 0}]), NCHW, square kernel.
function Conv2d.new(in_c, out_c, k, opts)
  local F = "nn.Conv2d"
  in_c = check_int(F, "in_channels", in_c, 1, 2)
  out_c = check_int(F, "out_channels", out_c, 1, 2)
  k = check_int(F, "kernel_size", k, 1, 2)
  opts = check_options(F, opts, { stride = true, padding = true, bias = true, seed = true }, 2)
  local self = setmetatable({}, Conv2d):_setup("Conv2d", { in_c, out_c, k, copy_opts(opts) })
  self.in_channels, self.out_channels, self.kernel_size = in_c, out_c, k
  self.stride = check_int(F, "stride", opts.stride or 1, 1, 2)
  self.padding = check_int(F, "padding", opts.padding or 0, 0, 2)
  local seed = opts.seed or 0
  local bound = 1 / math.sqrt(in_c * k * k)
  self.weight = self:_param("weight", uniform({ out_c, in_c, k, k }, bound, seed, 0))
  if opts.bias ~= false then self.bias = self:_param("bias", uniform({ out_c }, bound, seed, 1)) end
  return self
end

function Conv2d:describe()
  return ("Conv2d(%d -> %d, k%d, s%d, p%d)"):format(self.in_channels, self.out_channels, self.kernel_size,
    self.stride, self.padding)
end

function Conv2d:output_size(h, w)
  local k, s, p = self.kernel_size, self.stride, self.padding
  return (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
end

function Conv2d:forward(x)
  if not is_tensor(x) or x:dim() ~= 4 or x:size(2) ~= self.in_channels then
    self:_fail(("input is %s, expected (N, %d, H, W)"):format(is_tensor(x) and shape_str(x) or type(x),
      self.in_channels), 2)
  end
  local k, p = self.kernel_size, self.padding
  if x:size(3) + 2 * p < k or x:size(4) + 2 * p < k then
    self:_fail(("input is %s, smaller than the kernel %d with padding %d"):format(shape_str(x), k, p), 2)
  end
  x = dense(x)
  if self.training then self._x = x end
  return K.conv2d_fwd(x, self.weight.value, self.bias and self.bias.value, self.stride, self.padding)
end

function Conv2d:backward(dy, no_input_grad)
  local x = self:_need_cache("_x")
  return K.conv2d_bwd(x, self.weight.value, dense(dy), self.stride, self.padding, not no_input_grad,
    self.weight.grad, self.bias and self.bias.grad)
end

local AvgPool2d = class("AvgPool2d")
M.AvgPool2d = AvgPool2d

-- AvgPool2d(k): k x k windows, stride k (trailing rows/columns that do not fill a window are
-- dropped, like torch's default).
function AvgPool2d.new(k)
  k = check_int("nn.AvgPool2d", "k", k, 1, 2)
  local self = setmetatable({}, AvgPool2d):_setup("AvgPool2d", { k })
  self.k = k
  return self
end

function AvgPool2d:describe() return ("AvgPool2d(%d)"):format(self.k) end

function AvgPool2d:forward(x)
  if not is_tensor(x) or x:dim() ~= 4 or x:size(3) < self.k or x:size(4) < self.k then
    self:_fail(("input is %s, expected (N, C, H, W) with H, W >= %d"):format(
      is_tensor(x) and shape_str(x) or type(x), self.k), 2)
  end
  x = dense(x)
  if self.training then self._x = x end
  return K.avgpool_fwd(x, self.k)
end

function AvgPool2d:backward(dy) return K.avgpool_bwd(dense(dy), self:_need_cache("_x"), self.k) end

local GlobalAvgPool = class("GlobalAvgPool")
M.GlobalAvgPool = GlobalAvgPool

-- GlobalAvgPool(): (N, C, H, W) -> (N, C) means over H, W.
function GlobalAvgPool.new() return setmetatable({}, GlobalAvgPool):_setup("GlobalAvgPool", {}) end

function GlobalAvgPool:describe() return "GlobalAvgPool" end

function GlobalAvgPool:forward(x)
  if not is_tensor(x) or x:dim() ~= 4 then
    self:_fail(("input is %s, expected (N, C, H, W)"):format(is_tensor(x) and shape_str(x) or type(x)), 2)
  end
  x = dense(x)
  if self.training then self._shape = x:shape() end
  local hw = x:size(3) * x:size(4)
  return K.scale_(K.channel_sum(x), 1 / hw)
end

function GlobalAvgPool:backward(dy)
  local s = self:_need_cache("_shape")
  local dx = core.zeros(s)
  return K.add_channel_(dx, K.scale_(dy:clone(), 1 / (s[3] * s[4])))
end

-------------------------------------------------------------------------------- Sequential

local Sequential = class("Sequential")
M.Sequential = Sequential

-- Sequential{m1, m2, ...}: children named "1", "2", ...
function Sequential.new(list)
  if type(list) ~= "table" then fail("nn.Sequential", "expects a list of modules", 2) end
  local self = setmetatable({}, Sequential):_setup("Sequential", {})
  for i, m in ipairs(list) do
    if type(m) ~= "table" or getmetatable(m) == nil or not m.forward then
      fail("nn.Sequential", ("element %d is not a module"):format(i), 2)
    end
    self:_child(tostring(i), m)
    self[i] = m
  end
  return self
end

function Sequential:describe() return ("Sequential(%d)"):format(#self._children) end

function Sequential:arch()
  local list = {}
  for i, c in ipairs(self._children) do list[i] = c.module:arch() end
  return { class = "Sequential", args = { list } }
end

function Sequential:forward(x)
  for _, c in ipairs(self._children) do x = c.module:forward(x) end
  return x
end

function Sequential:backward(dy, no_input_grad)
  local n = #self._children
  for i = n, 1, -1 do dy = self._children[i].module:backward(dy, no_input_grad and i == 1) end
  return dy
end

-------------------------------------------------------------------------------- ResidualBlock

local ResidualBlock = class("ResidualBlock")
M.ResidualBlock = ResidualBlock

-- ResidualBlock(dim[, {hidden = dim, cond_dim = nil, dropout = 0, seed = 0}]):
--   out = x + fc2(dropout(silu(fc1(norm(x)) * (1 + scale) + shift)))
-- with [scale | shift] = cond(c), a Linear(cond_dim, 2 hidden) of the conditioning vector c
-- (FiLM); without cond_dim, scale = shift = 0.  forward(x, c, {skip = true}) returns x itself.
function ResidualBlock.new(dim, opts)
  local F = "nn.ResidualBlock"
  dim = check_int(F, "dim", dim, 1, 2)
  opts = check_options(F, opts, { hidden = true, cond_dim = true, dropout = true, seed = true }, 2)
  local self = setmetatable({}, ResidualBlock):_setup("ResidualBlock", { dim, copy_opts(opts) })
  local hidden = check_int(F, "hidden", opts.hidden or dim, 1, 2)
  local seed = opts.seed or 0
  self.dim, self.hidden = dim, hidden
  self.norm = self:_child("norm", LayerNorm.new(dim))
  self.fc1 = self:_child("fc1", Linear.new(dim, hidden, { seed = child_seed(seed, 1) }))
  if opts.cond_dim then
    self.cond_dim = check_int(F, "cond_dim", opts.cond_dim, 1, 2)
    self.cond = self:_child("cond", Linear.new(self.cond_dim, 2 * hidden, { seed = child_seed(seed, 2) }))
  end
  if (opts.dropout or 0) > 0 then
    self.drop = self:_child("dropout", Dropout.new(opts.dropout, { seed = child_seed(seed, 3) }))
  end
  self.fc2 = self:_child("fc2", Linear.new(hidden, dim, { seed = child_seed(seed, 4) }))
  return self
end

function ResidualBlock:describe()
  return ("ResidualBlock(%d, hidden %d%s)"):format(self.dim, self.hidden,
    self.cond_dim and (", cond %d"):format(self.cond_dim) or "")
end

local block_opts = { skip = true }

function ResidualBlock:forward(x, c, opts)
  opts = opts and check_options("ResidualBlock:forward", opts, block_opts, 2) or EMPTY
  if not is_tensor(x) or x:dim() ~= 2 or x:size(2) ~= self.dim then
    self:_fail(("input is %s, expected (N, %d)"):format(is_tensor(x) and shape_str(x) or type(x), self.dim), 2)
  end
  if opts.skip == true then
    self._skipped = true
    return x
  end
  self._skipped = false
  x = dense(x)
  local ss
  if self.cond then
    if not is_tensor(c) or c:dim() ~= 2 or c:size(1) ~= x:size(1) or c:size(2) ~= self.cond_dim then
      self:_fail(("conditioning is %s, expected (%d, %d)"):format(is_tensor(c) and shape_str(c) or type(c),
        x:size(1), self.cond_dim), 2)
    end
    ss = self.cond:forward(c)
  end
  local h = self.fc1:forward(self.norm:forward(x))
  local a = K.film_silu_fwd(h, ss)
  if self.drop then a = self.drop:forward(a) end
  if self.training then self._h, self._ss = h, ss or false end
  return self.fc2:forward(a, x)
end

-- backward(dy) -> dx, dc (dc nil without conditioning; both for a skipped block: dy, nil).
function ResidualBlock:backward(dy, no_input_grad)
  if self._skipped then return dy, nil end
  local h = self:_need_cache("_h")
  local ss = self._ss or nil
  dy = dense(dy)
  local da = self.fc2:backward(dy)
  if self.drop then da = self.drop:backward(da) end
  local dh, dss = K.film_silu_bwd(h, ss, da)
  local dc = ss and self.cond:backward(dss) or nil
  local dx = self.norm:backward(self.fc1:backward(dh), no_input_grad)
  if dx then K.acc_(dx, dy) end
  return dx, dc
end

-------------------------------------------------------------------------------- ResMLP

local ResMLP = class("ResMLP")
M.ResMLP = ResMLP

local resmlp_defaults = {
  in_dim = 784, width = 1024, depth = 6, emb_dim = 256, num_classes = false, out_dim = false, hidden = false,
  dropout = 0, label_dropout = 0, max_period = 10000, time_scale = 1, seed = 0,
}

-- ResMLP{in_dim, width, depth, emb_dim, num_classes, out_dim, hidden, dropout, label_dropout,
-- max_period, time_scale, seed}: the denoiser.  x (N, in_dim) -> stem Linear -> depth
-- ResidualBlocks conditioned (FiLM) on c = silu(time_mlp(sinusoidal(time_scale t)) + class
-- embedding) -> LayerNorm -> Linear(width, out_dim).
function ResMLP.new(opts)
  local F = "nn.ResMLP"
  opts = check_options(F, opts or {}, resmlp_defaults, 2)
  local o = {}
  for k, v in pairs(resmlp_defaults) do o[k] = v end
  for k, v in pairs(opts) do o[k] = v end
  local self = setmetatable({}, ResMLP):_setup("ResMLP", { copy_opts(opts) })
  self.in_dim = check_int(F, "in_dim", o.in_dim, 1, 2)
  self.width = check_int(F, "width", o.width, 1, 2)
  self.depth = check_int(F, "depth", o.depth, 0, 2)
  self.emb_dim = check_int(F, "emb_dim", o.emb_dim, 1, 2)
  self.out_dim = check_int(F, "out_dim", o.out_dim or o.in_dim, 1, 2)
  self.num_classes = o.num_classes and check_int(F, "num_classes", o.num_classes, 1, 2) or nil
  self.time_scale = o.time_scale
  local s = o.seed
  self.stem = self:_child("stem", Linear.new(self.in_dim, self.width, { seed = child_seed(s, 1) }))
  self.time_emb = self:_child("time_emb", Sinusoidal.new(self.emb_dim, { max_period = o.max_period, scale = o.time_scale }))
  self.time_fc1 = self:_child("time_fc1", Linear.new(self.emb_dim, self.emb_dim, { seed = child_seed(s, 2) }))
  self.time_fc2 = self:_child("time_fc2", Linear.new(self.emb_dim, self.emb_dim, { seed = child_seed(s, 3) }))
  if self.num_classes then
    self.class_emb = self:_child("class_emb", ClassEmbedding.new(self.num_classes, self.emb_dim,
      { dropout = o.label_dropout, seed = child_seed(s, 4) }))
  end
  self.blocks = {}
  for i = 1, self.depth do
    self.blocks[i] = ResidualBlock.new(self.width, { hidden = o.hidden or self.width, cond_dim = self.emb_dim,
      dropout = o.dropout, seed = child_seed(s, 100 + i) })
    self:_child("blocks." .. i, self.blocks[i])
  end
  self.head_norm = self:_child("head_norm", LayerNorm.new(self.width))
  self.head = self:_child("head", Linear.new(self.width, self.out_dim, { seed = child_seed(s, 5) }))
  return self
end

function ResMLP:describe()
  return ("ResMLP(%d -> %d, width %d, depth %d, emb %d%s)"):format(self.in_dim, self.out_dim, self.width, self.depth,
    self.emb_dim, self.num_classes and (", %d classes"):format(self.num_classes) or "")
end

-- The skip option: nil, a list of block indices, or a set {[i] = true}.
local function skip_set(self, skip, level)
  if skip == nil then return nil end
  if type(skip) ~= "table" then self:_fail("skip must be a list of block indices", level + 1) end
  local set = {}
  for k, v in pairs(skip) do
    local i = (v == true) and k or v
    if math.type(i) ~= "integer" and not (type(i) == "number" and i == math.floor(i)) or i < 1 or i > self.depth then
      self:_fail(("skip lists block %s, but blocks are 1 .. %d"):format(tostring(i), self.depth), level + 1)
    end
    if v ~= false then set[math.tointeger(i)] = true end
  end
  return set
end

local resmlp_call = { skip = true, embedding = true }

-- forward(x, t, labels[, {skip = {i, ...}}]) -> (N, out_dim), or x's shape when out_dim == in_dim.
-- x: (N, in_dim) or (N, ...) with in_dim elements per row; t: number, list or (N) tensor;
-- labels: nil (null class), a number, a list or an (N) tensor (ignored without num_classes).
-- opts.embedding: an (N, emb_dim) tensor used instead of the class embedding of labels (condition
-- annealing adds noise to it); labels are then ignored.
function ResMLP:forward(x, t, labels, opts)
  opts = opts and check_options("ResMLP:forward", opts, resmlp_call, 2) or EMPTY
  if not is_tensor(x) or x:dim() < 2 or x:numel() ~= x:size(1) * self.in_dim then
    self:_fail(("input is %s, expected (N, %d) or (N, ...) with %d elements per row"):format(
      is_tensor(x) and shape_str(x) or type(x), self.in_dim, self.in_dim), 2)
  end
  local n = x:size(1)
  local shape = x:shape()
  local x2 = x:dim() == 2 and x or x:reshape(n, self.in_dim)
  local skip = skip_set(self, opts.skip, 2)
  local te = self.time_emb:forward(time_tensor(self:_where(), t, n, 2))
  local t1 = self.time_fc1:forward(te)
  local c = self.time_fc2:forward(K.film_silu_fwd(t1))
  local e = opts.embedding
  if e ~= nil then
    if not self.class_emb then self:_fail("embedding given but the network has no class embedding (num_classes)", 2) end
    if self.training then self:_fail("embedding is for inference: put the network in eval mode", 2) end
    if not is_tensor(e) or e:dim() ~= 2 or e:size(1) ~= n or e:size(2) ~= self.emb_dim then
      self:_fail(("embedding is %s, expected (%d, %d)"):format(is_tensor(e) and shape_str(e) or type(e), n, self.emb_dim), 2)
    end
    c = c:add_(e)
  elseif self.class_emb then
    c = c:add_(self.class_emb:forward(labels, n))
  end
  local ca = K.film_silu_fwd(c)
  local h = self.stem:forward(x2)
  for i, b in ipairs(self.blocks) do
    h = b:forward(h, ca, (skip and skip[i]) and { skip = true } or nil)
  end
  local y = self.head:forward(self.head_norm:forward(h))
  if self.training then self._c, self._t1, self._shape = c, t1, shape end
  if self.out_dim == self.in_dim and #shape > 2 then y = y:view(shape) end
  return y
end

-- backward(dy[, {input_grad = true}]) -> dx shaped like the input (nil with input_grad = false).
function ResMLP:backward(dy, opts)
  opts = check_options("ResMLP:backward", opts, { input_grad = true }, 2)
  local c = self:_need_cache("_c")
  dy = dense(dy)
  if dy:dim() ~= 2 then dy = dy:view(dy:size(1), -1) end
  local dh = self.head_norm:backward(self.head:backward(dy))
  local dc
  for i = #self.blocks, 1, -1 do
    local dci
    dh, dci = self.blocks[i]:backward(dh)
    if dci then
      if dc then K.acc_(dc, dci) else dc = dci end
    end
  end
  if dc then
    local dcp = K.film_silu_bwd(c, nil, dc)
    if self.class_emb then self.class_emb:backward(dcp) end
    local d1 = self.time_fc2:backward(dcp)
    self.time_fc1:backward(K.film_silu_bwd(self._t1, nil, d1), true)
  end
  local dx = self.stem:backward(dh, opts.input_grad == false)
  if dx and #self._shape > 2 then dx = dx:view(self._shape) end
  return dx
end

-------------------------------------------------------------------------------- CNN

local CNN = class("CNN")
M.CNN = CNN

local cnn_defaults = {
  in_channels = 1, image_size = 28, channels = { 32, 64, 128 }, num_classes = 10, groups = 8,
  time_cond = false, emb_dim = 128, max_period = 10000, time_scale = 1, seed = 0,
}

-- CNN{in_channels, image_size, channels, num_classes, groups, time_cond, emb_dim, max_period,
-- time_scale, seed}: stage i = Conv2d(3x3, stride 1 for the first stage, 2 after, padding 1)
-- -> GroupNorm -> (+ Linear(emb) of the time embedding, per channel, when time_cond) -> SiLU;
-- then global average pooling (the features) and a Linear to the classes.
function CNN.new(opts)
  local F = "nn.CNN"
  opts = check_options(F, opts or {}, cnn_defaults, 2)
  local o = {}
  for k, v in pairs(cnn_defaults) do o[k] = v end
  for k, v in pairs(opts) do o[k] = v end
  local self = setmetatable({}, CNN):_setup("CNN", { copy_opts(opts) })
  self.in_channels = check_int(F, "in_channels", o.in_channels, 1, 2)
  self.image_size = check_int(F, "image_size", o.image_size, 1, 2)
  self.num_classes = check_int(F, "num_classes", o.num_classes, 1, 2)
  if type(o.channels) ~= "table" or #o.channels < 1 then fail(F, "channels must be a non-empty list", 2) end
  self.channels = o.channels
  self.time_cond = o.time_cond and true or false
  local s = o.seed
  self.stages = {}
  local cin = self.in_channels
  for i, ch in ipairs(o.channels) do
    ch = check_int(F, ("channels[%d]"):format(i), ch, 1, 2)
    local st = {}
    st.conv = self:_child("conv" .. i, Conv2d.new(cin, ch, 3, { stride = i == 1 and 1 or 2, padding = 1,
      seed = child_seed(s, 10 + i) }))
    st.norm = self:_child("norm" .. i, GroupNorm.new(math.min(o.groups, ch), ch))
    self.stages[i] = st
    cin = ch
  end
  if self.time_cond then
    self.emb_dim = check_int(F, "emb_dim", o.emb_dim, 1, 2)
    self.time_emb = self:_child("time_emb", Sinusoidal.new(self.emb_dim, { max_period = o.max_period, scale = o.time_scale }))
    self.time_fc = self:_child("time_fc", Linear.new(self.emb_dim, self.emb_dim, { seed = child_seed(s, 2) }))
    for i, st in ipairs(self.stages) do
      st.temb = self:_child("time_proj" .. i, Linear.new(self.emb_dim, st.conv.out_channels, { seed = child_seed(s, 30 + i) }))
    end
  end
  self.pool = self:_child("pool", GlobalAvgPool.new())
  self.feature_dim = cin
  self.head = self:_child("head", Linear.new(cin, self.num_classes, { seed = child_seed(s, 3) }))
  return self
end

function CNN:describe()
  return ("CNN(%dx%dx%d -> %d classes, channels %s%s)"):format(self.in_channels, self.image_size, self.image_size,
    self.num_classes, table.concat(self.channels, "/"), self.time_cond and ", time-conditioned" or "")
end

-- features(x[, t]) -> (N, feature_dim), the penultimate layer (global average pool).
function CNN:features(x, t)
  local S, C = self.image_size, self.in_channels
  if not is_tensor(x) or x:dim() < 2 or x:numel() ~= x:size(1) * C * S * S then
    self:_fail(("input is %s, expected (N, %d, %d, %d) or (N, %d)"):format(is_tensor(x) and shape_str(x) or type(x),
      C, S, S, C * S * S), 2)
  end
  local n = x:size(1)
  self._xshape = x:shape()
  local h = x:dim() == 4 and x or x:reshape(n, C, S, S)
  local ta
  if self.time_cond then
    if t == nil then self:_fail("this CNN is time-conditioned: forward(x, t) needs t", 2) end
    local te = self.time_emb:forward(time_tensor(self:_where(), t, n, 2))
    self._t1 = self.time_fc:forward(te)
    ta = K.film_silu_fwd(self._t1)
  end
  local pre = {}
  for i, st in ipairs(self.stages) do
    local z = st.norm:forward(st.conv:forward(h))
    if ta then K.add_channel_(z, st.temb:forward(ta)) end
    pre[i] = z
    h = K.film_silu_fwd(z)
  end
  if self.training then self._pre, self._ta = pre, ta or false end
  return self.pool:forward(h)
end

-- forward(x[, t]) -> logits (N, num_classes).
function CNN:forward(x, t) return self.head:forward(self:features(x, t)) end

-- backward(dlogits[, {input_grad = true}]) -> dx shaped like the input.
function CNN:backward(dy, opts)
  return self:backward_features(self.head:backward(dense(dy)), opts)
end

-- backward_features(dfeatures[, opts]): backward from the gradient of the features.
function CNN:backward_features(df, opts)
  opts = check_options("CNN:backward", opts, { input_grad = true }, 2)
  local pre = self:_need_cache("_pre")
  local dh = self.pool:backward(dense(df))
  local dta
  for i = #self.stages, 1, -1 do
    local st = self.stages[i]
    local dz = K.film_silu_bwd(pre[i], nil, dh)
    if st.temb then
      local d = st.temb:backward(K.channel_sum(dz))
      if dta then K.acc_(dta, d) else dta = d end
    end
    dh = st.conv:backward(st.norm:backward(dz), i == 1 and opts.input_grad == false)
  end
  if dta then
    self.time_fc:backward(K.film_silu_bwd(self._t1, nil, dta), true)
  end
  if dh and #self._xshape ~= 4 then dh = dh:view(self._xshape) end
  return dh
end

-------------------------------------------------------------------------------- constructors

-- nn.Linear(...) etc. call .new; classes stay reachable as nn.Linear (a callable table).
for name, c in pairs(classes) do
  setmetatable(c, { __index = Module, __call = function(_, ...) return c.new(...) end })
  M[name] = c
end

-- Rebuild a module from its arch() table.
function M.build(arch)
  if type(arch) ~= "table" or type(arch.class) ~= "string" then error("nn.build: arch must be {class = name, args = {...}}", 2) end
  local c = classes[arch.class]
  if not c then error(("nn.build: unknown class '%s'"):format(arch.class), 2) end
  local args = arch.args or {}
  if arch.class == "Sequential" then
    local list = {}
    for i, a in ipairs(args[1] or {}) do list[i] = M.build(a) end
    return c.new(list)
  end
  return c.new(table.unpack(args, 1, args.n or #args))
end

-------------------------------------------------------------------------------- losses

-- mse(pred, target) -> mean squared error (a number), gradient d loss / d pred.
function M.mse(pred, target)
  if not is_tensor(pred) or not is_tensor(target) then error("nn.mse: pred and target must be tensors", 2) end
  if pred:numel() ~= target:numel() then
    error(("nn.mse: pred is %s, target is %s"):format(shape_str(pred), shape_str(target)), 2)
  end
  local loss, g = K.mse(dense(pred), dense(target):view(pred:shape()), true)
  return loss, g
end

-- cross_entropy(logits (N, C), labels) -> mean negative log-likelihood, gradient.
function M.cross_entropy(logits, labels)
  if not is_tensor(logits) or logits:dim() ~= 2 then error("nn.cross_entropy: logits must be (N, C)", 2) end
  if type(labels) == "table" and not is_tensor(labels) then labels = core.tensor(labels) end
  if not is_tensor(labels) or labels:dim() ~= 1 or labels:size(1) ~= logits:size(1) then
    error(("nn.cross_entropy: labels must be a list or (%d) tensor"):format(logits:size(1)), 2)
  end
  return K.cross_entropy(dense(logits), dense(labels), true)
end

-------------------------------------------------------------------------------- optimisation

local function param_list(fname, params, level)
  if type(params) == "table" and params.parameters and getmetatable(params) then params = params:parameters() end
  if type(params) ~= "table" then fail(fname, "params must be a model or a list from m:parameters()", level + 1) end
  for i, p in ipairs(params) do
    if type(p) ~= "table" or not is_tensor(p.value) then
      fail(fname, ("params[%d] is not a {name, value, grad} record"):format(i), level + 1)
    end
  end
  return params
end

local AdamW = {}
AdamW.__index = AdamW
M.AdamW_class = AdamW

-- AdamW(params[, {lr = 1e-3, betas = {0.9, 0.999}, eps = 1e-8, weight_decay = 0.01}]).
-- Decoupled weight decay (torch.optim.AdamW); opt.lr may be changed between steps.
function M.AdamW(params, opts)
  local F = "nn.AdamW"
  params = param_list(F, params, 2)
  opts = check_options(F, opts, { lr = true, betas = true, eps = true, weight_decay = true }, 2)
  local betas = opts.betas or { 0.9, 0.999 }
  local self = setmetatable({
    params = params, lr = opts.lr or 1e-3, beta1 = betas[1], beta2 = betas[2], eps = opts.eps or 1e-8,
    weight_decay = opts.weight_decay or 0.01, t = 0, m = {}, v = {},
  }, AdamW)
  for i, p in ipairs(params) do
    self.m[i] = core.zeros(p.value:shape())
    self.v[i] = core.zeros(p.value:shape())
  end
  return self
end

function AdamW:step()
  self.t = self.t + 1
  local bc1, bc2 = 1 - self.beta1 ^ self.t, 1 - self.beta2 ^ self.t
  for i, p in ipairs(self.params) do
    K.adamw(p.value, p.grad, self.m[i], self.v[i], self.lr, self.beta1, self.beta2, self.eps, self.weight_decay, bc1, bc2)
  end
end

function AdamW:zero_grad()
  for _, p in ipairs(self.params) do p.grad:zero_() end
end

-- clip_grad_norm(params, max_norm) -> the total L2 norm before clipping; grads scaled by
-- max_norm / (norm + 1e-6) when the norm exceeds max_norm (torch semantics).
function M.clip_grad_norm(params, max_norm)
  params = param_list("nn.clip_grad_norm", params, 2)
  if type(max_norm) ~= "number" or not (max_norm > 0) then error("nn.clip_grad_norm: max_norm must be > 0", 2) end
  local s = 0
  for _, p in ipairs(params) do s = s + K.sumsq(p.grad) end
  local norm = math.sqrt(s)
  local coef = max_norm / (norm + 1e-6)
  if coef < 1 then
    for _, p in ipairs(params) do K.scale_(p.grad, coef) end
  end
  return norm
end

local EMA = {}
EMA.__index = EMA
M.EMA_class = EMA

-- EMA(params, decay): shadow copies updated by update(): e = decay e + (1 - decay) p.
function M.EMA(params, decay)
  params = param_list("nn.EMA", params, 2)
  if type(decay) ~= "number" or not (decay >= 0 and decay <= 1) then error("nn.EMA: decay must be in [0, 1]", 2) end
  local self = setmetatable({ params = params, decay = decay, shadow = {}, updates = 0 }, EMA)
  for i, p in ipairs(params) do self.shadow[i] = p.value:clone() end
  return self
end

function EMA:update()
  for i, p in ipairs(self.params) do K.ema_(self.shadow[i], p.value, self.decay) end
  self.updates = self.updates + 1
end

local function target_params(self, target)
  if target == nil then return self.params end
  local ps = param_list("EMA", target, 3)
  if #ps ~= #self.params then error(("EMA: the target has %d parameters, the EMA %d"):format(#ps, #self.params), 3) end
  for i, p in ipairs(ps) do
    if p.value:numel() ~= self.shadow[i]:numel() then
      error(("EMA: parameter %s is %s, the EMA holds %s"):format(p.name or i, shape_str(p.value), shape_str(self.shadow[i])), 3)
    end
  end
  return ps
end

-- copy_to([model]): writes the averages into the model's parameters (default: the tracked ones).
function EMA:copy_to(target)
  for i, p in ipairs(target_params(self, target)) do p.value:copy_(self.shadow[i]) end
end

-- swap([model]): exchanges averages and parameters (call twice to restore).
function EMA:swap(target)
  for i, p in ipairs(target_params(self, target)) do
    local tmp = p.value:clone()
    p.value:copy_(self.shadow[i])
    self.shadow[i]:copy_(tmp)
  end
end

-------------------------------------------------------------------------------- JSON (architecture)

local json = require("diffuse.json")
M._json = json

-------------------------------------------------------------------------------- persistence

local safetensors = function() return core.safetensors end

local ARCH_KEY = "diffuse.arch"

local function user_metadata(fname, md, level)
  local out = {}
  if md == nil then return out end
  if type(md) ~= "table" then fail(fname, "metadata must be a table of strings", level + 1) end
  for k, v in pairs(md) do
    if type(k) ~= "string" then fail(fname, "metadata keys must be strings", level + 1) end
    if k:sub(1, 8) == "diffuse." then fail(fname, ("metadata key '%s' is reserved (diffuse.*)"):format(k), level + 1) end
    if type(v) == "number" or type(v) == "boolean" then v = tostring(v) end
    if type(v) ~= "string" then fail(fname, ("metadata '%s' must be a string, got %s"):format(k, type(v)), level + 1) end
    out[k] = v
  end
  return out
end

-- save(path, model[, {dtype = "F32" | "F16" | "BF16", metadata = {...}}]) -> true or nil, message.
function M.save(path, model, opts)
  local F = "nn.save"
  if type(path) ~= "string" then fail(F, "path must be a string", 2) end
  if type(model) ~= "table" or not model.parameters then fail(F, "model must be a diffuse.nn module", 2) end
  opts = check_options(F, opts, { dtype = true, metadata = true }, 2)
  local md = user_metadata(F, opts.metadata, 2)
  md[ARCH_KEY] = json.encode(model:arch())
  md["diffuse.format"] = "diffuse.nn 1"
  local tensors = {}
  for _, p in ipairs(model:parameters()) do tensors[p.name] = p.value end
  return safetensors().save(path, tensors, md, { dtype = opts.dtype or "F32" })
end

-- Copy tensors[prefix .. name] into every parameter, checking names and shapes.
local function assign(path, params, tensors, prefix, seen)
  for _, p in ipairs(params) do
    local key = prefix .. p.name
    local t = tensors[key]
    if not t then return nil, ("%s: tensor '%s' is missing"):format(path, key) end
    if shape_str(t) ~= shape_str(p.value) then
      return nil, ("%s: tensor '%s' is %s, the model expects %s"):format(path, key, shape_str(t), shape_str(p.value))
    end
    seen[key] = true
  end
  for _, p in ipairs(params) do p.value:copy_(tensors[prefix .. p.name]) end
  return true
end

local function build_from(path, md)
  local a = md[ARCH_KEY]
  if not a then return nil, ("%s: no '%s' metadata: not a diffuse.nn file"):format(path, ARCH_KEY) end
  local ok, arch = pcall(json.decode, a)
  if not ok then return nil, ("%s: bad %s: %s"):format(path, ARCH_KEY, tostring(arch)) end
  local ok2, model = pcall(M.build, arch)
  if not ok2 then return nil, ("%s: cannot rebuild the model: %s"):format(path, tostring(model)) end
  return model
end

-- load(path) -> model (in eval mode), metadata; or nil, message for a file that does not match.
function M.load(path)
  if type(path) ~= "string" then fail("nn.load", "path must be a string", 2) end
  local tensors, md = safetensors().load(path)
  if not tensors then return nil, md end
  local model, err = build_from(path, md)
  if not model then return nil, err end
  local seen = {}
  local ok, e = assign(path, model:parameters(), tensors, "", seen)
  if not ok then return nil, e end
  for k in pairs(tensors) do
    if not seen[k] then return nil, ("%s: unexpected tensor '%s' (not a parameter of the model)"):format(path, k) end
  end
  model:eval()
  return model, md
end

-- save_state(path, {model, optimizer, ema, metadata}): a checkpoint (float32) with the model's
-- parameters ("model.*"), AdamW moments ("adam.m.*", "adam.v.*") and step, EMA shadows ("ema.*").
function M.save_state(path, parts)
  local F = "nn.save_state"
  parts = check_options(F, parts, { model = true, optimizer = true, ema = true, metadata = true }, 2)
  if not parts.model then fail(F, "model is required", 2) end
  local md = user_metadata(F, parts.metadata, 2)
  md[ARCH_KEY] = json.encode(parts.model:arch())
  md["diffuse.format"] = "diffuse.nn state 1"
  local tensors = {}
  local params = parts.model:parameters()
  for _, p in ipairs(params) do tensors["model." .. p.name] = p.value end
  local o = parts.optimizer
  if o then
    md["diffuse.optimizer"] = json.encode({ t = o.t, lr = o.lr, beta1 = o.beta1, beta2 = o.beta2, eps = o.eps,
      weight_decay = o.weight_decay })
    for i, p in ipairs(o.params) do
      tensors["adam.m." .. (p.name or i)] = o.m[i]
      tensors["adam.v." .. (p.name or i)] = o.v[i]
    end
  end
  local e = parts.ema
  if e then
    md["diffuse.ema"] = json.encode({ decay = e.decay, updates = e.updates })
    for i, p in ipairs(e.params) do tensors["ema." .. (p.name or i)] = e.shadow[i] end
  end
  return safetensors().save(path, tensors, md)
end

-- load_state(path, {model, optimizer, ema}) -> metadata, or nil, message.  Restores in place.
function M.load_state(path, parts)
  local F = "nn.load_state"
  parts = check_options(F, parts, { model = true, optimizer = true, ema = true }, 2)
  if not parts.model then fail(F, "model is required", 2) end
  local tensors, md = safetensors().load(path)
  if not tensors then return nil, md end
  if md[ARCH_KEY] ~= json.encode(parts.model:arch()) then
    return nil, ("%s: the checkpoint's architecture %s differs from the model's %s"):format(path,
      tostring(md[ARCH_KEY]), json.encode(parts.model:arch()))
  end
  local seen = {}
  local function named(ps, fallback)
    local out = {}
    for i, p in ipairs(ps) do out[i] = { name = p.name or tostring(i), value = fallback and fallback[i] or p.value } end
    return out
  end
  -- check everything first, then copy (assign copies only after its own check)
  local o, e = parts.optimizer, parts.ema
  if o and not md["diffuse.optimizer"] then return nil, path .. ": no optimizer state in the checkpoint" end
  if e and not md["diffuse.ema"] then return nil, path .. ": no EMA state in the checkpoint" end
  local checks = { { parts.model:parameters(), "model." } }
  if o then
    checks[#checks + 1] = { named(o.params, o.m), "adam.m." }
    checks[#checks + 1] = { named(o.params, o.v), "adam.v." }
  end
  if e then checks[#checks + 1] = { named(e.params, e.shadow), "ema." } end
  for _, c in ipairs(checks) do
    for _, p in ipairs(c[1]) do
      local t = tensors[c[2] .. p.name]
      if not t then return nil, ("%s: tensor '%s' is missing"):format(path, c[2] .. p.name) end
      if shape_str(t) ~= shape_str(p.value) then
        return nil, ("%s: tensor '%s' is %s, expected %s"):format(path, c[2] .. p.name, shape_str(t), shape_str(p.value))
      end
    end
  end
  for _, c in ipairs(checks) do assign(path, c[1], tensors, c[2], seen) end
  if o then
    local s = json.decode(md["diffuse.optimizer"])
    o.t, o.lr = s.t, s.lr
  end
  if e then e.updates = json.decode(md["diffuse.ema"]).updates end
  return md
end

-------------------------------------------------------------------------------- as a sampler model

local NetModel = {}
NetModel.__index = NetModel
NetModel.__call = function(self, x, p, cond, opts)
  local skip = opts and opts.skip
  if skip == nil then
    skip = self.skip
    if type(skip) == "function" then skip = skip(p) end
  end
  local t = self.time(p)
  local net = self.net
  if net.training then net:eval() end
  if net.num_classes then return net:forward(x, t, cond, skip and { skip = skip } or nil) end
  return net:forward(x, t, nil, skip and { skip = skip } or nil)
end
NetModel.__tostring = function(self)
  return ("diffuse model (%s, predicts %s)"):format(self.net:describe(), self.predicts)
end

-- The time input of a network for a schedule point: point.timestep when the schedule has one
-- (discrete VP schedules: 0 .. 999), else point.t.
function M.time_input(p) return p.timestep or p.t end

-- as_model(net, {predicts = "eps", schedule = s, time = fn(point), skip = list | fn(point)}):
-- a sampler model model(x, point, cond[, {skip}]); the net is put in eval mode.
function M.as_model(net, opts)
  local F = "nn.as_model"
  if type(net) ~= "table" or not net.forward then fail(F, "net must be a diffuse.nn module", 2) end
  opts = check_options(F, opts, { predicts = true, schedule = true, time = true, skip = true }, 2)
  local kinds = require("diffuse.predict").kinds
  local predicts = opts.predicts or "eps"
  if not kinds[predicts] then fail(F, ("unknown prediction kind '%s'"):format(tostring(predicts)), 2) end
  net:eval()
  return setmetatable({ net = net, predicts = predicts, schedule = opts.schedule, time = opts.time or M.time_input,
    skip = opts.skip }, NetModel)
end

return M
