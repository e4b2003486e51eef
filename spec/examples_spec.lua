-- Every script in examples/ (not the benchmarks) runs to completion as a smoke test.
require("helper")

describe("examples", function()
  local p = io.popen("ls examples/*.lua 2>/dev/null")
  for path in p:lines() do
    it(path .. " runs", function()
      local cmd = ("LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='%s/?.so;;' lua5.4 %s 2>&1"):format(
        os.getenv("DIFFUSE_BUILD") or "build", path)
      local h = io.popen(cmd)
      local out = h:read("a")
      local ok = h:close()
      assert(ok, path .. " failed:\n" .. out)
    end)
  end
  p:close()
end)
