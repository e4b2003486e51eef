-- `luarocks make --deps-mode=none` builds and installs the module offline into a local tree,
-- and a fresh Lua that only knows that tree can load it and compute with it.
local H = require("helper")

local function run(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("a")
  local ok, _, code = p:close()
  return ok, out, code
end

describe("luarocks install #install", function()
  it("builds offline into a local tree and the installed module works", function()
    local tree = os.tmpname()
    os.remove(tree)
    finally(function() os.execute("rm -rf '" .. tree .. "'") end)
    local ok, out = run(("luarocks --lua-version=5.4 make --deps-mode=none --tree='%s' diffuse-scm-1.rockspec"):format(tree))
    assert.is_true(ok, out)
    local probe = os.tmpname()
    finally(function() os.remove(probe) end)
    local f = assert(io.open(probe, "w"))
    f:write(([[
      local d = require('diffuse')
      local where = package.searchpath('diffuse.core', package.cpath)
      assert(where and where:find('%s', 1, true), 'diffuse.core loaded from ' .. tostring(where))
      local a = d.tensor({{1, 2}, {3, 4}})
      -- shipped data comes with it: the searched plans load by name from the installed tree
      local p = assert(d.plans.load('fashion-s3-nfe5'))
      assert(d.plan.nfe(p) == 5, 'nfe ' .. d.plan.nfe(p))
      io.write(('%%g'):format(a:get(2, 1) + a[1]:get(2)))
    ]]):format(tree))
    f:close()
    -- Nothing from the source tree may leak into the probe's search paths.
    local cmd = ("cd / && env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 sh -c "
      .. "'eval \"$(luarocks --lua-version=5.4 --tree=%s path)\" && lua5.4 %s'"):format(tree, probe)
    ok, out = run(cmd)
    assert.is_true(ok, out)
    assert.equal("5", out)
  end)
end)
