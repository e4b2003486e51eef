-- Elementwise arithmetic, unary math, broadcasting, lincomb and comparisons, each checked
-- against values computed in Lua from totable().
local H = require("helper")
local diffuse = H.diffuse

-- Deterministic pseudo-random values in [lo, hi).
local seed = 12345
local function rnd(lo, hi)
  seed = (seed * 1103515245 + 12345) % 2147483648
  return lo + (hi - lo) * seed / 2147483648
end
local function rand(shape, lo, hi)
  local function build(d)
    local t = {}
    for i = 1, shape[d] do t[i] = d == #shape and rnd(lo or -2, hi or 2) or build(d + 1) end
    return t
  end
  return diffuse.tensor(build(1))
end

-- Nested-table maps (Lua reference computations).
local function map1(x, f)
  if type(x) ~= "table" then return f(x) end
  local r = {}
  for i = 1, #x do r[i] = map1(x[i], f) end
  return r
end
local function map2(x, y, f)
  if type(x) ~= "table" then return f(x, y) end
  local r = {}
  for i = 1, #x do r[i] = map2(x[i], y[i], f) end
  return r
end
-- Lua value of a float: the tensor stores float32, so references start from totable().
local function vals(t) return t:totable() end

local binops = {
  add = function(x, y) return x + y end,
  sub = function(x, y) return x - y end,
  mul = function(x, y) return x * y end,
  div = function(x, y) return x / y end,
  pow = function(x, y) return x ^ y end,
  maximum = function(x, y) return math.max(x, y) end,
  minimum = function(x, y) return math.min(x, y) end,
}

local function sigmoid(x)
  if x >= 0 then return 1 / (1 + math.exp(-x)) end
  local e = math.exp(x)
  return e / (1 + e)
end
local unops = {
  neg = function(x) return -x end,
  exp = math.exp,
  log = math.log,
  sqrt = math.sqrt,
  abs = math.abs,
  tanh = function(x)
    local e = math.exp(2 * x)
    return (e - 1) / (e + 1)
  end,
  sigmoid = sigmoid,
  silu = function(x) return x * sigmoid(x) end,
  square = function(x) return x * x end,
}

describe("binary ops", function()
  for name, f in pairs(binops) do
    it(name .. " on contiguous and strided inputs, new and in place", function()
      local lo = (name == "pow" or name == "div") and 0.5 or -2
      local a, b = rand({ 3, 4 }, lo, 2), rand({ 3, 4 }, lo, 2)
      local want = map2(vals(a), vals(b), f)
      assert.allclose(want, a[name](a, b), 1e-6, 1e-5)
      assert.allclose(want, a[name](H.strided(a), H.strided(b)), 1e-6, 1e-5)
      assert.allclose(want, a[name](a, H.strided(b)), 1e-6, 1e-5)
      local c = a:clone()
      assert.equal(c, c[name .. "_"](c, b))
      assert.allclose(want, c, 1e-6, 1e-5)
      local s = H.strided(a)
      s[name .. "_"](s, H.strided(b))
      assert.is_false(s:is_contiguous())
      assert.allclose(want, s, 1e-6, 1e-5)
      -- the inputs are untouched by the out-of-place form
      assert.allclose(vals(a), a:clone())
    end)

    it(name .. " with a number on the right", function()
      local a = rand({ 2, 5 }, 0.5, 2)
      assert.allclose(map1(vals(a), function(x) return f(x, 1.5) end), a[name](a, 1.5), 1e-6, 1e-5)
      local c = a:clone()
      c[name .. "_"](c, 1.5)
      assert.allclose(map1(vals(a), function(x) return f(x, 1.5) end), c, 1e-6, 1e-5)
    end)
  end

  it("maximum and minimum propagate NaN", function()
    local a = diffuse.tensor({ 0 / 0, 1, 2 })
    local b = diffuse.tensor({ 5, 0 / 0, 1 })
    local mx, mn = a:maximum(b):totable(), a:minimum(b):totable()
    assert.is_true(mx[1] ~= mx[1] and mx[2] ~= mx[2])
    assert.is_true(mn[1] ~= mn[1] and mn[2] ~= mn[2])
    assert.equal(2, mx[3])
    assert.equal(1, mn[3])
  end)

  it("add and sub take a scale of b", function()
    local a, b = rand({ 4, 3 }), rand({ 4, 3 })
    assert.allclose(map2(vals(a), vals(b), function(x, y) return x + 0.25 * y end), a:add(b, 0.25))
    assert.allclose(map2(vals(a), vals(b), function(x, y) return x - 3 * y end), a:sub(b, 3))
    assert.allclose(map1(vals(a), function(x) return x - 6 end), a:sub(2, 3))
    local c = H.strided(a)
    c:add_(b, -2)
    assert.allclose(map2(vals(a), vals(b), function(x, y) return x - 2 * y end), c)
  end)

  it("other ops take no scale", function()
    local a = rand({ 2, 2 })
    assert.matches("no scale expected", H.error_of(a.mul, a, a, 2))
  end)
end)

describe("broadcasting", function()
  local a
  before_each(function() a = rand({ 3, 4 }) end)

  it("a row (D) and a row (1, D)", function()
    local r = rand({ 4 })
    local av, rv = vals(a), vals(r)
    local want = {}
    for i = 1, 3 do
      want[i] = {}
      for j = 1, 4 do want[i][j] = av[i][j] * rv[j] end
    end
    assert.allclose(want, a:mul(r))
    assert.allclose(want, a:mul(r:view(1, 4)))
    assert.allclose(want, a:mul(H.strided(r)))
    assert.allclose(want, r:mul(a)) -- either side
    local c = H.strided(a)
    c:mul_(r)
    assert.allclose(want, c)
  end)

  it("a column (N, 1)", function()
    local col = rand({ 3, 1 })
    local av, cv = vals(a), vals(col)
    local want = {}
    for i = 1, 3 do
      want[i] = {}
      for j = 1, 4 do want[i][j] = av[i][j] - cv[i][1] end
    end
    assert.allclose(want, a:sub(col))
    assert.allclose(want, a:clone():sub_(col))
    -- column against row: the outer product shape
    local r = rand({ 4 })
    local o = col:add(r)
    assert.same({ 3, 4 }, o:shape())
    assert.allclose(cv[2][1] + vals(r)[3], o:get(2, 3))
  end)

  it("higher dimensions: (2, 1, 3) with (4, 1) gives (2, 4, 3), up to 4-d", function()
    local x, y = rand({ 2, 1, 3 }), rand({ 4, 1 })
    local z = x:add(y)
    assert.same({ 2, 4, 3 }, z:shape())
    local xv, yv = vals(x), vals(y)
    for i = 1, 2 do
      for j = 1, 4 do
        for k = 1, 3 do assert.allclose(xv[i][1][k] + yv[j][1], z:get(i, j, k)) end
      end
    end
    local w = rand({ 2, 3, 4, 5 })
    local v = rand({ 3, 1, 5 })
    local wv, vv = vals(w), vals(v)
    local u = w:div(v)
    assert.same({ 2, 3, 4, 5 }, u:shape())
    assert.allclose(wv[2][3][4][5] / vv[3][1][5], u:get(2, 3, 4, 5), 1e-6, 1e-5)
    assert.allclose(wv[1][2][1][3] / vv[2][1][3], u:get(1, 2, 1, 3), 1e-6, 1e-5)
  end)

  it("in place keeps a's shape or raises with both shapes", function()
    local r = rand({ 4 })
    assert.matches("size mismatch: a is %[4%], b is %[3x4%]", H.error_of(r.add_, r, a))
    assert.matches("size mismatch: a is %[3x4%], b is %[3%]", H.error_of(a.add, a, rand({ 3 })))
    assert.matches("size mismatch: a is %[3x4%], b is %[2x4%]", H.error_of(a.add_, a, rand({ 2, 4 })))
  end)

  it("empty tensors give empty results", function()
    local e = diffuse.zeros(0, 3)
    assert.same({ 0, 3 }, e:add(1):shape())
    assert.same({ 0, 3 }, e:exp():shape())
    assert.same({ 0, 3 }, diffuse.lincomb({ e, e }, { 1, 2 }):shape())
  end)
end)

describe("operators", function()
  it("with numbers on either side", function()
    local a = rand({ 2, 3 }, 0.5, 2)
    local av = vals(a)
    local function m(f) return map1(av, f) end
    assert.allclose(m(function(x) return x + 2 end), a + 2)
    assert.allclose(m(function(x) return 2 + x end), 2 + a)
    assert.allclose(m(function(x) return x - 2 end), a - 2)
    assert.allclose(m(function(x) return 2 - x end), 2 - a)
    assert.allclose(m(function(x) return x * 3 end), a * 3)
    assert.allclose(m(function(x) return 3 * x end), 3 * a)
    assert.allclose(m(function(x) return x / 4 end), a / 4)
    assert.allclose(m(function(x) return 2 / x end), 2 / a)
    assert.allclose(m(function(x) return x ^ 2 end), a ^ 2)
    assert.allclose(m(function(x) return 2 ^ x end), 2 ^ a, 1e-6, 1e-5)
    assert.allclose(m(function(x) return -x end), -a)
    assert.allclose(m(function(x) return x * x + x end), a * a + a)
    assert.allclose(m(function(x) return -x end), -H.strided(a))
  end)

  it("reject other operands", function()
    local a = rand({ 2 })
    assert.matches("diffuse.Tensor or number expected, got string", H.error_of(function() return a + "x" end))
    assert.matches("diffuse.Tensor or number expected, got table", H.error_of(function() return {} * a end))
    assert.matches("diffuse.Tensor or number expected, got boolean", H.error_of(a.add, a, true))
    assert.matches("size mismatch: a is %[2%], b is %[3%]", H.error_of(function() return a + rand({ 3 }) end))
  end)
end)

describe("unary ops", function()
  for name, f in pairs(unops) do
    it(name .. " on contiguous and strided inputs, new and in place", function()
      local lo = (name == "log" or name == "sqrt") and 0.1 or -3
      local a = rand({ 3, 5 }, lo, 3)
      local want = map1(vals(a), f)
      assert.allclose(want, a[name](a), 1e-6, 1e-5)
      assert.allclose(want, a[name](H.strided(a)), 1e-6, 1e-5)
      local s = H.strided(a)
      assert.equal(s, s[name .. "_"](s))
      assert.allclose(want, s, 1e-6, 1e-5)
      assert.allclose(vals(a), a:clone()) -- untouched
    end)
  end

  it("exp on a big tensor (many chunks) matches Lua", function()
    local a = diffuse.linspace(-5, 5, 100003)
    local want = map1(vals(a), math.exp)
    assert.allclose(want, a:exp(), 1e-6, 1e-5)
    assert.allclose(want, a:clone():exp_(), 1e-6, 1e-5)
  end)

  it("sigmoid and silu are stable for large |x|", function()
    local x = diffuse.tensor({ -1000, -100, -20, 0, 20, 100, 1000 })
    local s, u = x:sigmoid():totable(), x:silu():totable()
    for i = 1, 7 do
      assert.is_true(s[i] == s[i] and u[i] == u[i], "NaN at " .. i)
    end
    assert.allclose(map1(vals(x), sigmoid), s, 1e-30, 1e-6)
    assert.equal(0, s[1])
    assert.equal(1, s[7])
    assert.equal(0.5, s[4])
    assert.allclose({ 0, -100 * sigmoid(-100), -20 * sigmoid(-20), 0, 20 * sigmoid(20), 100, 1000 },
      u, 1e-30, 1e-6)
  end)

  it("clamp with either bound nil", function()
    local a = rand({ 4, 3 }, -3, 3)
    local av = vals(a)
    assert.allclose(map1(av, function(x) return math.min(math.max(x, -1), 0.5) end), a:clamp(-1, 0.5))
    assert.allclose(map1(av, function(x) return math.max(x, 0) end), a:clamp(0))
    assert.allclose(map1(av, function(x) return math.max(x, 0) end), a:clamp(0, nil))
    assert.allclose(map1(av, function(x) return math.min(x, 1) end), H.strided(a):clamp(nil, 1))
    assert.allclose(av, a:clamp())
    local s = H.strided(a)
    s:clamp_(-1, 1)
    assert.allclose(map1(av, function(x) return math.min(math.max(x, -1), 1) end), s)
    assert.matches("upper bound is below the lower bound", H.error_of(a.clamp, a, 1, 0))
    assert.matches("number expected, got string", H.error_of(a.clamp, a, "x"))
  end)

  it("pow with a number exponent", function()
    local a = rand({ 5 }, 0.1, 3)
    assert.allclose(map1(vals(a), function(x) return x ^ 0.5 end), a:pow(0.5), 1e-6, 1e-5)
    assert.allclose(map1(vals(a), function(x) return x ^ 3 end), a:clone():pow_(3), 1e-6, 1e-5)
  end)

  it("reject stray arguments", function()
    local a = rand({ 2 })
    assert.matches("no argument expected", H.error_of(a.exp, a, 2))
    assert.matches("diffuse.Tensor expected, got number", H.error_of(a.exp, 3))
  end)
end)

describe("aliasing in place", function()
  it("x:add_(x:t()) reads the transpose before writing", function()
    local x = rand({ 3, 3 })
    local xv = vals(x)
    local want = {}
    for i = 1, 3 do
      want[i] = {}
      for j = 1, 3 do want[i][j] = xv[i][j] + xv[j][i] end
    end
    x:add_(x:t())
    assert.allclose(want, x)
  end)

  it("the very same view goes straight through", function()
    local x = rand({ 2, 3 })
    local want = map1(vals(x), function(v) return v * v end)
    x:mul_(x)
    assert.allclose(want, x)
  end)

  it("a row of x broadcast into x", function()
    local x = rand({ 3, 4 })
    local xv = vals(x)
    local want = {}
    for i = 1, 3 do
      want[i] = {}
      for j = 1, 4 do want[i][j] = xv[i][j] - xv[2][j] end
    end
    x:sub_(x[2])
    assert.allclose(want, x)
  end)

  it("shifted overlapping narrows", function()
    local x = diffuse.tensor({ 1, 2, 3, 4, 5 })
    x:narrow(1, 2, 4):add_(x:narrow(1, 1, 4))
    assert.same({ 1, 3, 5, 7, 9 }, x:totable())
  end)
end)

describe("lincomb", function()
  local function lua_lincomb(ts, cs)
    local r = map1(vals(ts[1]), function() return 0 end)
    for k = 1, #ts do
      r = map2(r, vals(ts[k]), function(acc, v) return acc + cs[k] * v end)
    end
    return r
  end

  for n = 1, 6 do
    it(n .. " term(s) against Lua, contiguous and strided", function()
      local ts, ss, cs = {}, {}, {}
      for k = 1, n do
        ts[k] = rand({ 5, 7 })
        ss[k] = k % 2 == 0 and H.strided(ts[k]) or ts[k]
        cs[k] = rnd(-2, 2)
      end
      local want = lua_lincomb(ts, cs)
      assert.allclose(want, diffuse.lincomb(ts, cs))
      assert.allclose(want, diffuse.lincomb(ss, cs))
      local out = diffuse.zeros(5, 7)
      assert.equal(out, out:lincomb_(ts, cs))
      assert.allclose(want, out)
      local sout = H.strided(diffuse.zeros(5, 7))
      sout:lincomb_(ss, cs)
      assert.allclose(want, sout)
      -- out = t1 (and the last term), same view
      local t1 = ts[1]:clone()
      local tsa = { t1 }
      for k = 2, n do tsa[k] = ts[k] end
      t1:lincomb_(tsa, cs)
      assert.allclose(want, t1)
      local tl = ts[n]:clone()
      tsa[1], tsa[n] = ts[1], tl
      tl:lincomb_(tsa, cs)
      assert.allclose(want, tl)
    end)
  end

  it("many terms (heap scratch) and 1-d, 3-d, 4-d shapes", function()
    local ts, cs = {}, {}
    for k = 1, 20 do ts[k], cs[k] = rand({ 2, 3, 2, 3 }), rnd(-1, 1) end
    assert.allclose(lua_lincomb(ts, cs), diffuse.lincomb(ts, cs), 1e-5)
    local a, b = rand({ 9 }), rand({ 9 })
    assert.allclose(lua_lincomb({ a, b }, { 2, -1 }), diffuse.lincomb({ a, b }, { 2, -1 }))
    local c, d = rand({ 2, 3, 4 }), H.strided(rand({ 2, 3, 4 }))
    assert.allclose(lua_lincomb({ c, d }, { 0.5, 3 }), diffuse.lincomb({ c, d }, { 0.5, 3 }))
  end)

  it("out aliasing a different view of a term reads it first", function()
    local x = rand({ 4, 4 })
    local y = rand({ 4, 4 })
    local xt = x:t():contiguous()
    local want = lua_lincomb({ xt, x, y }, { 1, 2, -1 })
    x:lincomb_({ x:t(), x, y }, { 1, 2, -1 })
    assert.allclose(want, x)
    -- a term that is a shifted window of out
    local z = diffuse.tensor({ 1, 2, 3, 4, 5, 6 })
    z:narrow(1, 2, 5):lincomb_({ z:narrow(1, 1, 5), z:narrow(1, 2, 5) }, { 1, 10 })
    assert.same({ 1, 21, 32, 43, 54, 65 }, z:totable())
  end)

  it("big tensors (streamed stores, unaligned out) match a composition of ops", function()
    local n = 2 * 1024 * 1024 + 3
    local a, b, c = diffuse.linspace(-1, 1, n), diffuse.linspace(3, 0, n), diffuse.linspace(0, 5, n)
    local want = a:mul(0.5):add(b, -2):add(c, 0.25)
    local got = diffuse.lincomb({ a, b, c }, { 0.5, -2, 0.25 })
    assert.is_true(got:max_abs_diff(want) < 1e-5, got:max_abs_diff(want))
    local wide = diffuse.zeros(n + 1)
    local out = wide:narrow(1, 2, n) -- contiguous but not 16-byte aligned
    out:lincomb_({ a, b, c }, { 0.5, -2, 0.25 })
    assert.is_true(out:max_abs_diff(want) < 1e-5)
    assert.equal(0, wide:get(1))
    a:lincomb_({ a, b, c }, { 0.5, -2, 0.25 })
    assert.is_true(a:max_abs_diff(want) < 1e-5)
  end)

  it("uses the coefficients in double precision", function()
    -- (1 + 1e-9) x - x = 1e-9 x: coefficients rounded to float first would give 0
    local x = diffuse.tensor({ 1, 2, 4 })
    assert.allclose({ 1e-9, 2e-9, 4e-9 }, diffuse.lincomb({ x, x }, { 1 + 1e-9, -1 }), 1e-15, 1e-6)
  end)

  it("reports bad arguments", function()
    local a, b = rand({ 2, 3 }), rand({ 4, 5 })
    assert.matches("size mismatch: term 1 is %[2x3%], term 3 is %[4x5%]",
      H.error_of(diffuse.lincomb, { a, a, b }, { 1, 2, 3 }))
    assert.matches("size mismatch: out is %[2x3%], term 2 is %[4x5%]",
      H.error_of(a.lincomb_, a, { a, b }, { 1, 2 }))
    assert.matches("3 coefficients for 2 tensors", H.error_of(diffuse.lincomb, { a, a }, { 1, 2, 3 }))
    assert.matches("1 coefficient for 2 tensors", H.error_of(diffuse.lincomb, { a, a }, { 1 }))
    assert.matches("coefficient 2 is not a number %(got string%)",
      H.error_of(diffuse.lincomb, { a, a }, { 1, "2" }))
    assert.matches("term 2 is not a tensor %(got number%)", H.error_of(diffuse.lincomb, { a, 5 }, { 1, 2 }))
    assert.matches("needs at least one tensor", H.error_of(diffuse.lincomb, {}, {}))
    assert.matches("table expected, got diffuse.Tensor", H.error_of(diffuse.lincomb, a, { 1 }))
    local closed = rand({ 2, 3 })
    closed:close()
    assert.matches("term 1 is not a tensor %(got a closed tensor%)",
      H.error_of(diffuse.lincomb, { closed }, { 1 }))
  end)
end)

describe("comparisons", function()
  it("allclose has numpy semantics and defaults", function()
    local a = diffuse.tensor({ 1, 2, 3 })
    assert.is_true(a:allclose(a:clone()))
    assert.is_true(a:allclose(diffuse.tensor({ 1, 2, 3.00001 }))) -- within rtol 1e-5 * 3
    assert.is_false(a:allclose(diffuse.tensor({ 1, 2, 3.001 })))
    assert.is_true(a:allclose(diffuse.tensor({ 1, 2, 3.001 }), 1e-3))
    assert.is_true(diffuse.allclose(a, diffuse.tensor({ 1.5, 2, 3 }), 0, 0.5))
    assert.is_false(diffuse.allclose(a, diffuse.tensor({ 1.5, 2, 3 }), 0, 0.4))
    -- |a - b| <= atol + rtol * |b|: b is the reference
    local z = diffuse.tensor({ 0 })
    assert.is_false(z:allclose(diffuse.tensor({ 1e-7 })))
    assert.is_true(z:allclose(diffuse.tensor({ 1e-9 })))
  end)

  it("NaN is never close, equal infinities are", function()
    local nan = diffuse.tensor({ 0 / 0 })
    assert.is_false(nan:allclose(nan))
    assert.is_false(nan:allclose(diffuse.tensor({ 1 }), 1e9, 1e9))
    local inf = diffuse.tensor({ math.huge, -math.huge })
    assert.is_true(inf:allclose(inf:clone()))
    assert.is_false(inf:allclose(diffuse.tensor({ math.huge, math.huge })))
    assert.is_false(inf:allclose(diffuse.tensor({ 1e30, -1e30 }), 1, 1))
  end)

  it("allclose and max_abs_diff broadcast and accept strided views", function()
    local m = diffuse.tensor({ { 1, 2 }, { 1, 2 } })
    assert.is_true(m:allclose(diffuse.tensor({ 1, 2 })))
    assert.is_false(m:allclose(diffuse.tensor({ 2, 1 })))
    assert.is_true(diffuse.ones(3, 2):allclose(1))
    assert.is_true(H.strided(m):allclose(m))
    assert.is_false(m:t():allclose(m))
    assert.equal(1, m:max_abs_diff(diffuse.tensor({ 2, 1 })))
    assert.equal(0.5, diffuse.max_abs_diff(m, diffuse.tensor({ { 1.5 }, { 1.5 } })))
    assert.matches("size mismatch: a is %[2x2%], b is %[3%]", H.error_of(m.allclose, m, diffuse.zeros(3)))
    assert.matches("size mismatch: a is %[2x2%], b is %[3%]", H.error_of(diffuse.max_abs_diff, m, diffuse.zeros(3)))
    assert.matches("rtol must be non%-negative", H.error_of(m.allclose, m, m, -1))
  end)

  it("max_abs_diff is a double, NaN when a difference is NaN", function()
    local a = diffuse.tensor({ 1, 2, 3 })
    local d = a:max_abs_diff(diffuse.tensor({ 1, 2.5, 1 }))
    assert.equal("number", type(d))
    assert.equal(2, d)
    local tiny = a:max_abs_diff(a:add(1e-6))
    assert.is_true(tiny > 0 and tiny < 1e-5)
    local n = a:max_abs_diff(diffuse.tensor({ 1, 0 / 0, 3 }))
    assert.is_true(n ~= n)
    assert.equal(0, diffuse.zeros(0):max_abs_diff(diffuse.zeros(0)))
  end)
end)
