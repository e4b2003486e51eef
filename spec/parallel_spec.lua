-- diffuse.search.parallel: forked worker pools.  Results are compared with fn evaluated
-- directly in this process; worker pids (read from /proc) show who evaluated what and that
-- every worker was reaped.
local H = require("helper")
local diffuse = H.diffuse
local parallel = require("diffuse.search.parallel")

local BUILD = os.getenv("DIFFUSE_BUILD") or "build"
local ENV = ("LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='%s/?.so;;'"):format(BUILD)

local function mypid()
  local f = assert(io.open("/proc/self/stat"))
  local pid = f:read("n")
  f:close()
  return pid
end

-- true when the process is gone (a zombie still has its /proc entry)
local function gone(pid) return not H.exists("/proc/" .. pid .. "/stat") end

local function busy(seconds)
  local t = diffuse.wtime()
  while diffuse.wtime() - t < seconds do end
end

-- run a Lua script in a subprocess under `timeout`; returns output, exit code, seconds
local function run_script(src, args, limit)
  local dir = H.tmpdir()
  local path = dir .. "/script.lua"
  H.spit(path, src)
  local t = diffuse.wtime()
  local h = io.popen(("%s timeout %d lua5.4 %s %s 2>&1; echo \"exit=$?\""):format(ENV, limit or 60, path, args or ""))
  local out = h:read("a")
  h:close()
  os.execute("rm -rf '" .. dir .. "'")
  return out, tonumber(out:match("exit=(%d+)%s*$")), diffuse.wtime() - t
end

-- an exact-mixture sampling run: matmul-bound (K, D >= 32), deterministic for a seed
local means = diffuse.randn({ 40, 32 }, { seed = 7 })
local gmm = diffuse.models.gmm{ means = means, stds = 0.6 }
local function sample_fn(item)
  local x = diffuse.sample{ model = gmm, schedule = diffuse.schedule.vp_linear(), solver = item.solver,
    steps = item.steps, shape = { 48, 32 }, seed = item.seed }
  return { sum = x:sum(), first = x:get(1, 1), solver = item.solver, half = item.steps / 2 }
end
local items = {}
for i = 1, 7 do
  items[i] = { solver = i % 2 == 0 and "ddim" or "dpmpp_2m", steps = 3 + i % 4, seed = 100 + i }
end

describe("parallel data transport", function()
  it("round-trips floats exactly, integral ones, -0.0, inf and nan included", function()
    local v = { 2.0, -0.0, 1 / 3, math.huge, -math.huge, 0 / 0, 7, "a\n\"b\"\0", true,
      { x = 1e300, y = { 5.0, 2 ^ 60 + 0.0 } } }
    local back = parallel._decode(parallel._encode(v, "v"))
    for i, x in ipairs({ 2.0, -0.0, 1 / 3, math.huge, -math.huge }) do
      assert.equal(math.type(x), math.type(back[i]))
      assert.equal(("%a"):format(x), ("%a"):format(back[i]))
    end
    assert.is_true(back[6] ~= back[6])
    assert.equal("integer", math.type(back[7]))
    assert.equal("a\n\"b\"\0", back[8])
    assert.is_true(back[9])
    assert.equal(1e300, back[10].x)
    assert.equal("float", math.type(back[10].y[1]))
    assert.equal(2 ^ 60, back[10].y[2])
  end)

  it("names what is not plain data", function()
    local cyc = {}
    cyc.self = cyc
    assert.has_error(function() parallel._encode({ a = { print } }, "item 4") end,
      'item 4 is not plain data: item 4["a"][1] is a function')
    assert.has_error(function() parallel._encode(diffuse.zeros(2), "item 1") end,
      "item 1 is not plain data: item 1 is a tensor (send v:totable(), or a seed to rebuild it)")
    assert.has_error(function() parallel._encode(cyc, "item 2") end,
      'item 2 is not plain data: item 2["self"] contains itself')
  end)
end)

describe("parallel.pool (fork)", function()
  local threads
  setup(function() threads = diffuse.get_threads() end)
  teardown(function() diffuse.set_threads(threads) end)

  it("gives the serial results, bit for bit and in order, for 0 to 3 workers", function()
    diffuse.set_threads(1)
    local direct = {}
    for i, it in ipairs(items) do direct[i] = sample_fn(it) end
    diffuse.set_threads(threads)
    for _, w in ipairs({ 0, 1, 2, 3, 12 }) do
      local pool = parallel.pool{ workers = w }
      local got = pool:map(sample_fn, items)
      assert.equal(#items, #got)
      for i = 1, #items do
        assert.equal(direct[i].sum, got[i].sum)
        assert.equal(direct[i].first, got[i].first)
        assert.equal(direct[i].solver, got[i].solver)
        assert.equal(math.type(direct[i].half), math.type(got[i].half))
      end
    end
    assert.equal(threads, diffuse.get_threads()) -- in-process maps put the count back
  end)

  it("hands out items one at a time, reaps every worker, and handles empty lists", function()
    local pool = parallel.pool{ workers = 2 }
    -- item 1 takes long: the other worker must take every other item meanwhile
    local got = pool:map(function(i)
      if i == 1 then busy(1.0) end
      return mypid()
    end, { 1, 2, 3, 4, 5, 6 })
    local parent = mypid()
    for i = 2, 6 do assert.are_not.equal(got[1], got[i]) end
    for i = 1, 6 do
      assert.are_not.equal(parent, got[i])
      assert.is_true(gone(got[i]))
    end
    assert.same({}, pool:map(function(x) return x end, {}))
  end)

  it("raises a worker's error naming the item, and stays usable", function()
    local pool = parallel.pool{ workers = 2 }
    local pids = {}
    local ok, err = pcall(pool.map, pool, function(i)
      if i == 5 then error("no good: " .. i, 0) end
      return mypid()
    end, { 1, 2, 3, 4, 5, 6, 7, 8 })
    assert.is_false(ok)
    assert.matches("^parallel%.map: item 5 failed in worker %d %(pid %d+%): no good: 5$", err)
    local serial = parallel.pool{ workers = 0 }
    ok, err = pcall(serial.map, serial, function(i) if i == 5 then error("no good", 0) end end, { 4, 5 })
    assert.equal("parallel.map: item 2 failed: no good", err)
    local got = pool:map(function(i) pids[#pids + 1] = mypid(); return i * 10 end, { 1, 2, 3 })
    assert.same({ 10, 20, 30 }, got)
    -- a result that cannot travel is an error of that item
    ok, err = pcall(pool.map, pool, function(i) return i == 2 and print or i end, { 1, 2, 3 })
    assert.matches("item 2 failed in worker %d %(pid %d+%): the result is not plain data: the result is a function", err)
  end)

  it("reports a worker killed by a signal instead of hanging", function()
    local pool = parallel.pool{ workers = 2 }
    local t = diffuse.wtime()
    local ok, err = pcall(pool.map, pool, function(i)
      if i == 3 then os.execute("kill -9 " .. mypid()) busy(5) end
      busy(0.05)
      return i
    end, { 1, 2, 3, 4, 5 })
    assert.is_false(ok)
    assert.matches("worker %d %(pid %d+%) was killed by signal 9 %(.*%) while evaluating item 3", err)
    assert.is_true(diffuse.wtime() - t < 3)
  end)

  it("calls the progress hook once per result, as results arrive", function()
    local pool = parallel.pool{ workers = 2 }
    local seen, dones = {}, {}
    local got = pool:map(function(x) return x * x end, { 1, 2, 3, 4, 5 }, {
      progress = function(done, total, result, i)
        assert.equal(5, total)
        assert.equal(i * i, result)
        dones[#dones + 1] = done
        seen[i] = true
      end })
    assert.same({ 1, 4, 9, 16, 25 }, got)
    assert.same({ 1, 2, 3, 4, 5 }, dones)
    assert.same({ true, true, true, true, true }, seen)
    local updates = {}
    local bar = { update = function(_, done) updates[#updates + 1] = done end }
    parallel.pool{ workers = 0 }:map(function(x) return x end, { 1, 2, 3 }, { progress = bar })
    assert.same({ 1, 2, 3 }, updates)
  end)

  it("keeps workers safe after the parent ran multithreaded kernels", function()
    -- libgomp's and OpenBLAS's thread pools do not survive fork: without one kernel thread
    -- per worker, the child's next parallel region hangs (the timeout catches that).
    local out, code = run_script([[
      local diffuse = require("diffuse")
      local parallel = require("diffuse.search.parallel")
      diffuse.set_threads(2)
      local a = diffuse.randn({ 384, 384 }, { seed = 1 })
      local warm = diffuse.lincomb({ a, a:matmul(a) }, { 0.5, 0.25 }):sum()
      local function fn(s)
        local b = diffuse.randn({ 384, 384 }, { seed = s })
        return { diffuse.lincomb({ a, b:matmul(a) }, { 0.5, 0.25 }):sum(), warm }
      end
      local ser = parallel.pool{ workers = 0 }:map(fn, { 1, 2, 3, 4 })
      local par = parallel.pool{ workers = 2 }:map(fn, { 1, 2, 3, 4 })
      for i = 1, 4 do assert(ser[i][1] == par[i][1] and ser[i][2] == par[i][2], "differs at " .. i) end
      print("same", diffuse.get_threads())
    ]], "", 60)
    assert.equal(0, code, out)
    assert.matches("same\t2", out)
  end)

  it("stops and reaps the workers on Ctrl-C", function()
    local script = [[
      local diffuse = require("diffuse")
      local parallel = require("diffuse.search.parallel")
      local function pid() local f = io.open("/proc/self/stat"); local p = f:read("n"); f:close(); return p end
      local parent = pid()
      local function fn(i)
        io.write("worker ", pid(), "\n"); io.flush()
        if i == 1 then os.execute("sleep 0.3; kill -INT " .. parent) end
        local t = diffuse.wtime()
        while diffuse.wtime() - t < 20 do end
        return i
      end
      local pool = parallel.pool{ workers = 2 }
      if arg[1] == "caught" then
        diffuse.progress.with_interrupt(function(stop)
          local ok, err = pcall(pool.map, pool, fn, { 1, 2, 3, 4 })
          print(err, stop())
        end)
        print("still alive")
      else
        pool:map(fn, { 1, 2, 3, 4 })
        print("not reached")
      end
    ]]
    for _, mode in ipairs({ "caught", "default" }) do
      local out, code, seconds = run_script(script, mode, 30)
      assert.is_true(seconds < 10, out)
      local pids = {}
      for p in out:gmatch("worker (%d+)") do pids[#pids + 1] = p end
      assert.equal(2, #pids, out)
      for _, p in ipairs(pids) do assert.is_true(gone(p), "worker " .. p .. " left behind") end
      if mode == "caught" then
        assert.equal(0, code, out)
        assert.matches("parallel.map: interrupted %(Ctrl%-C%) after 0 of 4 items; the workers were stopped\ttrue", out)
        assert.matches("still alive", out)
      else
        -- Ctrl-C goes on to the interpreter's own handler: lua5.4 stops with "interrupted!"
        assert.are_not.equal(0, code, out)
        assert.matches("interrupted", out)
        assert.is_nil(out:find("not reached"))
      end
    end
  end)

  it("checks its arguments", function()
    assert.has_error(function() parallel.pool{ worker = 2 } end,
      "parallel.pool: unknown option 'worker' (valid: mpi, threads, workers)")
    assert.has_error(function() parallel.pool{ workers = -1 } end,
      "parallel.pool: workers must be an integer between 0 and 256, got -1")
    assert.has_error(function() parallel.pool{ threads = 0 } end,
      "parallel.pool: threads must be a positive integer, got 0")
    local pool = parallel.pool{ workers = 2 }
    assert.has_error(function() pool:map(42, {}) end, "parallel.map: fn must be a function, got number")
    assert.has_error(function() pool:map(print, { 1, nil, 3 }) end)
    assert.has_error(function() pool:map(print, { x = 1 }) end,
      "parallel.map: items must be a list 1..n without holes (key x)")
    assert.has_error(function() pool:map(print, { 1, { f = print } }) end,
      'parallel.map: item 2 is not plain data: item 2["f"] is a function')
    assert.has_error(function() pool:map(print, {}, { progres = true }) end,
      "parallel.map: unknown option 'progres' (valid: progress)")
    assert.has_error(function() pool:serve(print) end,
      "parallel.serve: serve is for MPI pools (parallel.pool{mpi = true})")
    assert.is_true(pool:is_root())
    assert.equal(0, pool.rank)
    assert.is_true(parallel.cpus() >= 1)
    pool:close()
    assert.has_error(function() pool:map(print, {}) end, "parallel.map: the pool is closed")
  end)
end)
