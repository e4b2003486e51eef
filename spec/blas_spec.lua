-- diffuse.matmul / Tensor:matmul against a naive double-precision product, every layout the
-- tensor API can produce, errors, and how OpenBLAS gets loaded (blas_info, OPENBLAS_CORETYPE).
local H = require("helper")
local diffuse = H.diffuse

-- Deterministic "random-ish" values in [-1, 1): a small LCG, so failures reproduce.
local seed = 12345
local function rnd()
  seed = (seed * 1103515245 + 12345) % 2147483648
  return seed / 1073741824 - 1
end

local function rand_table(r, c)
  local t = {}
  for i = 1, r do
    t[i] = {}
    for j = 1, c do t[i][j] = rnd() end
  end
  return t
end

local function transpose_table(t)
  local r, c = #t, #t[1]
  local o = {}
  for j = 1, c do
    o[j] = {}
    for i = 1, r do o[j][i] = t[i][j] end
  end
  return o
end

-- Reference product in double; inputs are rounded to float first, as the tensor holds them.
local function ref_matmul(A, B, alpha)
  local m, k, n = #A, #B, #B[1]
  local C = {}
  for i = 1, m do
    C[i] = {}
    for j = 1, n do
      local s = 0.0
      for l = 1, k do s = s + A[i][l] * B[l][j] end
      C[i][j] = (alpha or 1) * s
    end
  end
  return C
end

-- Float tables as stored in a tensor (so the reference sees the same inputs).
local function as_float(t) return diffuse.tensor(t):totable() end

local function tol(k) return 1e-5 * (k + 1), 1e-4 end

-- Lua invocation that finds this build's module from a subprocess.
local function run_lua(env, code)
  local f = os.tmpname()
  local h = assert(io.open(f, "w"))
  h:write(code)
  h:close()
  local cmd = ("env %s LUA_PATH='%s' LUA_CPATH='%s' lua5.4 %s 2>&1"):format(env, package.path,
    package.cpath, f)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  os.remove(f)
  return out
end

describe("matmul", function()
  local shapes = {
    {3, 4, 5}, {1, 7, 3}, {6, 5, 1}, {1, 1, 1}, {5, 1, 4}, {1, 9, 1}, {17, 33, 9}, {64, 70, 65},
  }

  it("matches a naive double product for square, non-square, 1xN and Nx1 shapes", function()
    for _, s in ipairs(shapes) do
      local m, k, n = s[1], s[2], s[3]
      local A, B = as_float(rand_table(m, k)), as_float(rand_table(k, n))
      local a, b = diffuse.tensor(A), diffuse.tensor(B)
      local atol, rtol = tol(k)
      assert.allclose(ref_matmul(A, B), diffuse.matmul(a, b), atol, rtol)
      assert.allclose(ref_matmul(A, B), a:matmul(b), atol, rtol)
    end
  end)

  it("gives an exact small product", function()
    local a = diffuse.tensor{{1, 2, 3}, {4, 5, 6}}
    local b = diffuse.tensor{{1, 0}, {0, 1}, {1, 1}}
    assert.same({{4, 5}, {10, 11}}, a:matmul(b):totable())
  end)

  it("handles every combination of transposed views and transa/transb flags", function()
    local m, k, n = 7, 5, 6
    local A, B = as_float(rand_table(m, k)), as_float(rand_table(k, n))
    local expect = ref_matmul(A, B)
    local atol, rtol = tol(k)
    local count = 0
    for _, aview in ipairs{false, true} do
      for _, aflag in ipairs{false, true} do
        for _, bview in ipairs{false, true} do
          for _, bflag in ipairs{false, true} do
            -- the logical operand is A, or A' when the flag asks matmul to transpose it back
            local la = aflag and transpose_table(A) or A
            local lb = bflag and transpose_table(B) or B
            -- a view: store the transpose densely and look at it through :t()
            local a = aview and diffuse.tensor(transpose_table(la)):t() or diffuse.tensor(la)
            local b = bview and diffuse.tensor(transpose_table(lb)):t() or diffuse.tensor(lb)
            assert.equal(aview, not a:is_contiguous())
            local c = diffuse.matmul(a, b, {transa = aflag, transb = bflag})
            assert.same({m, n}, c:shape())
            local ok, msg = H.close(expect, c, atol, rtol)
            assert(ok, ("aview=%s transa=%s bview=%s transb=%s: %s"):format(
              tostring(aview), tostring(aflag), tostring(bview), tostring(bflag), msg))
            count = count + 1
          end
        end
      end
    end
    assert.equal(16, count)
  end)

  it("accepts strided inputs: H.strided, column narrows, and views that need a copy", function()
    local m, k, n = 9, 6, 4
    local A, B = as_float(rand_table(m, k)), as_float(rand_table(k, n))
    local expect = ref_matmul(A, B)
    local atol, rtol = tol(k)
    local a, b = diffuse.tensor(A), diffuse.tensor(B)
    assert.allclose(expect, H.strided(a):matmul(b), atol, rtol)
    assert.allclose(expect, a:matmul(H.strided(b)), atol, rtol)
    assert.allclose(expect, H.strided(a):matmul(H.strided(b)), atol, rtol)
    -- rows contiguous but a leading dimension larger than the width
    local wide = diffuse.zeros(m, k + 3)
    wide:narrow(2, 2, k):copy_(a)
    local na = wide:narrow(2, 2, k)
    assert.is_false(na:is_contiguous())
    assert.allclose(expect, na:matmul(b), atol, rtol)
    -- every other element in both directions: no BLAS layout fits, so matmul copies
    local big = diffuse.zeros(k, 2, n, 2)
    local sb = big:select(4, 1):select(2, 1)
    sb:copy_(b)
    assert.same({2 * n * 2, 2}, sb:stride())
    assert.allclose(expect, a:matmul(sb), atol, rtol)
    local bigA = diffuse.zeros(m, k, 3)
    local sa = bigA:select(3, 2)
    sa:copy_(a)
    assert.allclose(expect, sa:matmul(sb), atol, rtol)
    assert.allclose(ref_matmul(transpose_table(A), A), diffuse.matmul(sa, sa, {transa = true}), tol(m))
  end)

  it("does matrix-vector and vector-matrix products with 1-d results", function()
    local m, k = 8, 5
    local A, v = as_float(rand_table(m, k)), as_float(rand_table(1, k))[1]
    local a, x = diffuse.tensor(A), diffuse.tensor(v)
    local col = {}
    for i = 1, k do col[i] = {v[i]} end
    local expect = {}
    for i, r in ipairs(ref_matmul(A, col)) do expect[i] = r[1] end
    local atol, rtol = tol(k)
    local y = a:matmul(x)
    assert.same({m}, y:shape())
    assert.allclose(expect, y, atol, rtol)
    assert.allclose(expect, a:matmul(H.strided(x)), atol, rtol)
    assert.allclose(expect, H.strided(a):matmul(H.strided(x)), atol, rtol)
    -- vector-matrix: x' A' with A' given as a transposed view, or with transb
    local at = diffuse.tensor(transpose_table(A))
    local z = diffuse.matmul(x, a:t())
    assert.same({m}, z:shape())
    assert.allclose(expect, z, atol, rtol)
    assert.allclose(expect, diffuse.matmul(H.strided(x), a, {transb = true}), atol, rtol)
    assert.allclose(expect, diffuse.matmul(x, at), atol, rtol)
    -- transa with a vector b: A' y
    local w = as_float(rand_table(1, m))[1]
    local expect2 = {}
    for j = 1, k do
      local s = 0
      for i = 1, m do s = s + A[i][j] * w[i] end
      expect2[j] = s
    end
    assert.allclose(expect2, diffuse.matmul(a, diffuse.tensor(w), {transa = true}), tol(m))
  end)

  it("scales by alpha", function()
    local A, B = as_float(rand_table(4, 3)), as_float(rand_table(3, 2))
    assert.allclose(ref_matmul(A, B, -2.5), diffuse.matmul(diffuse.tensor(A), diffuse.tensor(B), {alpha = -2.5}),
      tol(3))
  end)

  it("writes into out= in place and returns it; beta accumulates", function()
    local A, B = as_float(rand_table(5, 4)), as_float(rand_table(4, 3))
    local a, b = diffuse.tensor(A), diffuse.tensor(B)
    local out = diffuse.full({5, 3}, 99)
    local r = a:matmul(b, {out = out})
    assert.is_true(rawequal(out, r))
    assert.allclose(ref_matmul(A, B), out, tol(4))
    -- beta: out = 0.5 out + 2 a b
    local before = out:totable()
    diffuse.matmul(a, b, {out = out, alpha = 2, beta = 0.5})
    local expect = ref_matmul(A, B, 2)
    for i = 1, 5 do for j = 1, 3 do expect[i][j] = expect[i][j] + 0.5 * before[i][j] end end
    assert.allclose(expect, out, tol(4))
    -- a row of a larger tensor is a contiguous out
    local big = diffuse.zeros(3, 5, 3)
    a:matmul(b, {out = big[2]})
    assert.allclose(ref_matmul(A, B), big[2], tol(4))
    assert.allclose(diffuse.zeros(5, 3):totable(), big[1])
    -- vector result into a 1-d out
    local v = diffuse.zeros(5)
    a:matmul(diffuse.ones(4), {out = v})
    for i = 1, 5 do assert.near(A[i][1] + A[i][2] + A[i][3] + A[i][4], v:get(i), 1e-5) end
  end)

  it("is right when out is also an input", function()
    local S = as_float(rand_table(6, 6))
    local s = diffuse.tensor(S)
    s:matmul(s, {out = s})
    assert.allclose(ref_matmul(S, S), s, tol(6))
    local T = as_float(rand_table(6, 6))
    local t = diffuse.tensor(T)
    diffuse.matmul(t, t, {out = t, transa = true, beta = 1})
    local expect = ref_matmul(transpose_table(T), T)
    for i = 1, 6 do for j = 1, 6 do expect[i][j] = expect[i][j] + T[i][j] end end
    assert.allclose(expect, t, tol(6))
  end)

  it("gives zeros for k = 0 and empty results for m or n = 0", function()
    local c = diffuse.matmul(diffuse.zeros(3, 0), diffuse.zeros(0, 4))
    assert.same({3, 4}, c:shape())
    assert.same({{0, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 0}}, c:totable())
    local out = diffuse.full({2, 2}, 7)
    diffuse.matmul(diffuse.zeros(2, 0), diffuse.zeros(0, 2), {out = out})
    assert.same({{0, 0}, {0, 0}}, out:totable())
    assert.same({0, 4}, diffuse.matmul(diffuse.zeros(0, 3), diffuse.zeros(3, 4)):shape())
    assert.same({5, 0}, diffuse.matmul(diffuse.zeros(5, 3), diffuse.zeros(3, 0)):shape())
    assert.same({0, 0}, diffuse.matmul(diffuse.zeros(2, 0), diffuse.zeros(0)):totable())
  end)

  it("raises clear errors", function()
    local a, b = diffuse.zeros(2, 3), diffuse.zeros(4, 5)
    assert.matches("size mismatch: a is %[2x3%], b is %[4x5%]", H.error_of(diffuse.matmul, a, b))
    assert.matches("size mismatch: a is %[2x3%], b is %[4x5%]", H.error_of(function() return a:matmul(b) end))
    assert.matches("size mismatch: transposed a is %[3x2%], b is %[4x5%]",
      H.error_of(diffuse.matmul, a, b, {transa = true}))
    assert.matches("size mismatch: a is %[2x3%], transposed b is %[5x4%]",
      H.error_of(diffuse.matmul, a, b, {transb = true}))
    assert.matches("size mismatch: a is %[2x3%], b is %[4%]", H.error_of(diffuse.matmul, a, diffuse.zeros(4)))
    assert.matches("size mismatch: a is %[4%], b is %[2x3%]", H.error_of(diffuse.matmul, diffuse.zeros(4), a))
    assert.matches("a must be 1%-d or 2%-d, got %[2x2x2%]", H.error_of(diffuse.matmul, diffuse.zeros(2, 2, 2), a))
    assert.matches("b must be 1%-d or 2%-d", H.error_of(diffuse.matmul, a, diffuse.zeros(3, 2, 2)))
    assert.matches("both 1%-d", H.error_of(diffuse.matmul, diffuse.zeros(3), diffuse.zeros(3)))
    assert.matches("Tensor expected, got number", H.error_of(diffuse.matmul, a, 3))
    assert.matches("unknown option 'trans_a'", H.error_of(diffuse.matmul, a, b, {trans_a = true}))
    assert.matches("option transa must be a boolean", H.error_of(diffuse.matmul, a, b, {transa = 1}))
    assert.matches("option alpha must be a number", H.error_of(diffuse.matmul, a, b, {alpha = "x"}))
    assert.matches("beta needs out", H.error_of(diffuse.matmul, a, a:t(), {beta = 1}))
    assert.matches("transa needs a 2%-d a", H.error_of(diffuse.matmul, diffuse.zeros(2), a, {transa = true}))
    assert.matches("size mismatch: out is %[2x3%], result is %[2x2%]",
      H.error_of(diffuse.matmul, a, a:t(), {out = diffuse.zeros(2, 3)}))
    assert.matches("out must be contiguous",
      H.error_of(diffuse.matmul, a, a:t(), {out = diffuse.zeros(2, 2):t()}))
    assert.matches("option out must be a live diffuse.Tensor", H.error_of(diffuse.matmul, a, a:t(), {out = {}}))
  end)
end)

describe("blas_info and threads", function()
  it("reports the library, the core and how it was chosen", function()
    local info = diffuse.blas_info()
    assert.is_string(info.library)
    assert.is_string(info.chosen)
    assert.is_string(info.core)
    assert.is_string(info.config)
    assert.matches("OpenBLAS", info.config)
    assert.is_true(math.type(info.threads) == "integer" and info.threads >= 1)
    assert.is_nil(info.error)
    local user = os.getenv("OPENBLAS_CORETYPE")
    if user and user ~= "" then
      assert.equal("user: " .. user, info.chosen)
      assert.equal(user:lower(), info.core:lower())
    elseif info.chosen ~= "default" and info.chosen ~= "preloaded" then
      assert.equal(info.chosen:lower(), info.core:lower())
    end
  end)

  it("sets and gets the thread count for OpenBLAS and OpenMP", function()
    local n = diffuse.get_threads()
    diffuse.set_threads(1)
    assert.equal(1, diffuse.get_threads())
    assert.equal(1, diffuse.blas_info().threads)
    local a = diffuse.tensor(rand_table(40, 30))
    local single = a:matmul(a:t()):totable()
    diffuse.set_threads(2)
    assert.equal(2, diffuse.get_threads())
    assert.allclose(single, a:matmul(a:t()), 1e-5)
    diffuse.set_threads(n)
    assert.equal(n, diffuse.get_threads())
    assert.matches("thread count must be", H.error_of(diffuse.set_threads, 0))
  end)
end)

describe("loading OpenBLAS in a fresh process", function()
  local probe = [[
    local d = require("diffuse")
    local i = d.blas_info()
    local c = d.tensor{{1, 2}, {3, 4}}:matmul(d.tensor{{1}, {1}})
    print(("core=%s chosen=%s env=%s sum=%s"):format(tostring(i.core), i.chosen,
      tostring(os.getenv("OPENBLAS_CORETYPE")), tostring(c:get(1, 1) + c:get(2, 1))))
  ]]

  it("keeps the user's OPENBLAS_CORETYPE", function()
    local out = run_lua("OPENBLAS_CORETYPE=Haswell", probe)
    assert.matches("core=Haswell chosen=user: Haswell env=Haswell sum=10", out)
    out = run_lua("OPENBLAS_CORETYPE=Prescott", probe)
    assert.matches("core=Prescott chosen=user: Prescott env=Prescott sum=10", out)
  end)

  it("chooses a core itself when the user has none, and does not leak the variable", function()
    local out = run_lua("-u OPENBLAS_CORETYPE", probe)
    local core, chosen, env = out:match("core=(%S+) chosen=(%S+) env=(%S+) sum=10")
    assert(core, out)
    assert.equal("nil", env)
    assert.is_nil(chosen:match("^user"))
    if chosen ~= "default" then assert.equal(chosen:lower(), core:lower()) end
  end)

  it("still loads without a BLAS, and matmul says what to install", function()
    local out = run_lua("DIFFUSE_BLAS=/nonexistent/libnothing.so", [[
      local d = require("diffuse")
      local i = d.blas_info()
      print("library=" .. tostring(i.library) .. " error=" .. tostring(i.error))
      print(select(2, pcall(d.matmul, d.zeros(2, 2), d.zeros(2, 2))))
    ]])
    assert.matches("library=nil error=[^\n]*libnothing%.so", out)
    assert.matches("matmul needs a BLAS library[^\n]*libopenblas%-dev", out)
  end)
end)
