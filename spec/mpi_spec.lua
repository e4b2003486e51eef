-- diffuse.search.parallel over MPI: `mpirun -n 2` on a tiny SPMD script; rank 0 maps, rank 1
-- serves.  The results must equal this process's own serial evaluation, bit for bit.
-- Skipped (with the reason printed) where Open MPI's mpirun is not installed.
local H = require("helper")
local diffuse = H.diffuse

local BUILD = os.getenv("DIFFUSE_BUILD") or "build"

local function have_mpirun()
  return os.execute("command -v mpirun >/dev/null 2>&1") == true
end

local SCRIPT = [[
local diffuse = require("diffuse")
local parallel = require("diffuse.search.parallel")
local pool = parallel.pool{ mpi = true }
local gmm = diffuse.models.gmm{ means = { { -1, 0 }, { 1, 0.5 } }, stds = { 0.3, 0.5 } }
local function fn(item)
  if item.fail then error("cannot do item " .. item.seed, 0) end
  local x = diffuse.sample{ model = gmm, schedule = diffuse.schedule.vp_cosine(), solver = "dpmpp_2m",
    steps = item.steps, shape = { 16, 2 }, seed = item.seed }
  return { x:sum(), x:get(1, 2) }
end
local items = {}
for i = 1, 6 do items[i] = { steps = 3 + i % 3, seed = i } end
if pool:is_root() then
  print(("root %d of %d"):format(pool.rank, pool.size))
  for i, r in ipairs(pool:map(fn, items)) do print(("result %d %a %a"):format(i, r[1], r[2])) end
  items[4].fail = true
  local ok, err = pcall(pool.map, pool, fn, items)
  print("error: " .. tostring(err))
  items[4].fail = nil
  print("again " .. #pool:map(fn, items))
  pool:close()
else
  local n = pool:serve(fn)
  print(("rank %d served %d"):format(pool.rank, n))
  pool:close()
end
]]

describe("parallel.pool{mpi = true}", function()
  if not have_mpirun() then
    io.stderr:write("\nmpi_spec: skipped: mpirun not found (Debian: apt-get install openmpi-bin libopenmpi-dev)\n")
    pending("mpirun not found (Debian: apt-get install openmpi-bin libopenmpi-dev)")
    return
  end

  it("maps over 2 ranks with the serial results, reports a rank's error, and closes", function()
    local dir = H.tmpdir()
    H.spit(dir .. "/mpi.lua", SCRIPT)
    -- root is allowed to run mpirun only when it says so twice (containers run as root)
    local cmd = ("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
      .. "LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='%s/?.so;;' "
      .. "timeout 60 mpirun -n 2 --oversubscribe --bind-to none lua5.4 %s/mpi.lua 2>&1; echo \"exit=$?\"")
      :format(BUILD, dir)
    local h = io.popen(cmd)
    local out = h:read("a")
    h:close()
    os.execute("rm -rf '" .. dir .. "'")
    assert.matches("exit=0%s*$", out)
    assert.matches("root 0 of 2", out)

    -- the same runs here, one after the other, with one kernel thread (the pool's default)
    local threads = diffuse.get_threads()
    diffuse.set_threads(1)
    local gmm = diffuse.models.gmm{ means = { { -1, 0 }, { 1, 0.5 } }, stds = { 0.3, 0.5 } }
    for i = 1, 6 do
      local x = diffuse.sample{ model = gmm, schedule = diffuse.schedule.vp_cosine(), solver = "dpmpp_2m",
        steps = 3 + i % 3, shape = { 16, 2 }, seed = i }
      local want = ("result %d %a %a"):format(i, x:sum(), x:get(1, 2))
      assert.truthy(out:find(want, 1, true), "missing: " .. want .. "\n" .. out)
    end
    diffuse.set_threads(threads)

    assert.matches("error: parallel%.map: item 4 failed on rank 1: cannot do item 4", out)
    assert.matches("again 6", out)
    -- one serving rank takes items one at a time, and none is handed out after a failure:
    -- 6 + 4 (the failing one included) + 6
    assert.equal(16, tonumber(out:match("rank 1 served (%d+)")), out)
  end)
end)
