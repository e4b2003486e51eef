local H = require("helper")
local tmpdir, slurp, spit, exists = H.tmpdir, H.slurp, H.spit, H.exists
local diffuse = H.diffuse
local image = diffuse.image

-- ---- small file utilities ----

local function listing(dir)
  local p = io.popen("ls -A '" .. dir .. "'")
  local s = p:read("a")
  p:close()
  return s
end

-- 8-bit values of a tensor read back from a PNG (read gives byte / 255).
local function bytes_of(t)
  local out = {}
  for i, v in ipairs(H.flatten(t)) do
    local b = v * 255
    out[i] = math.floor(b + 0.5)
    assert(math.abs(b - out[i]) < 1e-3, "read value is not k/255: " .. v)
  end
  return out
end

-- ---- a tiny PNG encoder (stored deflate blocks) to craft inputs our writer never makes ----

local CRC = {}
for n = 0, 255 do
  local c = n
  for _ = 1, 8 do
    if c & 1 == 1 then c = 0xEDB88320 ~ (c >> 1) else c = c >> 1 end
  end
  CRC[n] = c
end
local function crc32(s)
  local c = 0xFFFFFFFF
  for i = 1, #s do c = CRC[(c ~ s:byte(i)) & 0xFF] ~ (c >> 8) end
  return c ~ 0xFFFFFFFF
end

local function adler32(s)
  local a, b = 1, 0
  for i = 1, #s do
    a = (a + s:byte(i)) % 65521
    b = (b + a) % 65521
  end
  return (b << 16) | a
end

local function zlib_stored(s)
  local parts, pos = { "\x78\x01" }, 1
  repeat
    local block = s:sub(pos, pos + 65534)
    pos = pos + #block
    local final = pos > #s and 1 or 0
    parts[#parts + 1] = string.pack("<BI2I2", final, #block, (~#block) & 0xFFFF) .. block
  until pos > #s
  parts[#parts + 1] = string.pack(">I4", adler32(s))
  return table.concat(parts)
end

local function chunk(kind, data)
  return string.pack(">I4", #data) .. kind .. data .. string.pack(">I4", crc32(kind .. data))
end

local CHANNELS = { [0] = 1, [2] = 3, [3] = 1, [4] = 2, [6] = 4 }

local function pack_row(samples, depth)
  if depth == 8 then return string.char(table.unpack(samples)) end
  if depth == 16 then
    local t = {}
    for i, v in ipairs(samples) do t[i] = string.pack(">I2", v) end
    return table.concat(t)
  end
  local bytes, acc, nbits = {}, 0, 0
  for _, v in ipairs(samples) do
    acc, nbits = (acc << depth) | v, nbits + depth
    if nbits == 8 then bytes[#bytes + 1], acc, nbits = acc, 0, 0 end
  end
  if nbits > 0 then bytes[#bytes + 1] = acc << (8 - nbits) end
  return string.char(table.unpack(bytes))
end

local ADAM7 = { { 0, 0, 8, 8 }, { 4, 0, 8, 8 }, { 0, 4, 4, 8 }, { 2, 0, 4, 4 }, { 0, 2, 2, 4 },
  { 1, 0, 2, 2 }, { 0, 1, 1, 2 } }

-- o = {width, height, color, depth, pixel = function(x, y) -> {samples}, plte, trns, interlace}
local function make_png(o)
  local passes = o.interlace and ADAM7 or { { 0, 0, 1, 1 } }
  local raw = {}
  for _, p in ipairs(passes) do
    local x0, y0, dx, dy = p[1], p[2], p[3], p[4]
    if x0 < o.width and y0 < o.height then
      for y = y0, o.height - 1, dy do
        local samples = {}
        for x = x0, o.width - 1, dx do
          for _, v in ipairs(o.pixel(x, y)) do samples[#samples + 1] = v end
        end
        raw[#raw + 1] = "\0" .. pack_row(samples, o.depth)
      end
    end
  end
  local ihdr = string.pack(">I4I4BBBBB", o.width, o.height, o.depth, o.color, 0, 0, o.interlace and 1 or 0)
  local s = "\137PNG\r\n\26\n" .. chunk("IHDR", ihdr)
  if o.plte then s = s .. chunk("PLTE", string.char(table.unpack(o.plte))) end
  if o.trns then s = s .. chunk("tRNS", o.trns) end
  return s .. chunk("IDAT", zlib_stored(table.concat(raw))) .. chunk("IEND", "")
end

-- ---- specs ----

describe("image.write and image.read", function()
  local dir
  before_each(function() dir = tmpdir() end)
  after_each(function() os.execute("rm -rf '" .. dir .. "'") end)

  it("round-trips every 8-bit gray level in the default range -1,1", function()
    local img = diffuse.zeros(16, 16)
    local want = {}
    for b = 0, 255 do
      img:set(b // 16 + 1, b % 16 + 1, b / 127.5 - 1)
      want[b + 1] = b
    end
    local path = dir .. "/gray.png"
    assert.is_true(image.write(path, img))
    local r = assert(image.read(path))
    assert.same({ 1, 16, 16 }, r:shape())
    assert.same(want, bytes_of(r))
  end)

  it("round-trips every 8-bit level in range 0,1", function()
    local img = diffuse.zeros(1, 16, 16)
    local want = {}
    for b = 0, 255 do
      img:set(1, b // 16 + 1, b % 16 + 1, b / 255)
      want[b + 1] = b
    end
    local path = dir .. "/gray01.png"
    assert.is_true(image.write(path, img, { range = "0,1" }))
    assert.allclose(img, assert(image.read(path)), 1e-7, 0)
  end)

  it("rounds half up and clamps out-of-range, infinite and NaN values", function()
    local nan, inf = 0 / 0, math.huge
    local img = diffuse.tensor({ { -1, 1, 0, -0.5, 0.25, 2, -3, nan, inf, -inf } })
    local path = dir .. "/clamp.png"
    assert.is_true(image.write(path, img))
    assert.same({ 0, 255, 128, 64, 159, 255, 0, 0, 255, 0 }, bytes_of(image.read(path)))
    img = diffuse.tensor({ { 0, 1, 0.5, 0.2, 1.5, -0.2, nan } })
    assert.is_true(image.write(path, img, { range = "0,1" }))
    assert.same({ 0, 255, 128, 51, 255, 0, 0 }, bytes_of(image.read(path)))
  end)

  it("keeps RGB and RGBA channels apart, and accepts (1, C, H, W)", function()
    for _, c in ipairs({ 3, 4 }) do
      local img = diffuse.zeros(c, 2, 3)
      local want = {}
      for k = 1, c do
        for y = 1, 2 do
          for x = 1, 3 do
            local b = 40 * k + 10 * y + x
            img:set(k, y, x, b / 255)
            want[#want + 1] = b
          end
        end
      end
      local path = dir .. "/c" .. c .. ".png"
      assert.is_true(image.write(path, img, { range = "0,1" }))
      local r = assert(image.read(path))
      assert.same({ c, 2, 3 }, r:shape())
      assert.same(want, bytes_of(r))
      assert.is_true(image.write(path, img:view(1, c, 2, 3), { range = "0,1" }))
      assert.same(want, bytes_of(image.read(path)))
    end
  end)

  it("writes non-contiguous views with the same bytes as contiguous ones", function()
    local img = diffuse.zeros(3, 5, 7)
    for k = 1, 3 do
      for y = 1, 5 do
        for x = 1, 7 do img:set(k, y, x, ((k * 31 + y * 7 + x * 3) % 255) / 127.5 - 1) end
      end
    end
    local a, b = dir .. "/a.png", dir .. "/b.png"
    assert.is_true(image.write(a, img))
    local strided = H.strided(img)
    assert.is_false(strided:is_contiguous())
    assert.is_true(image.write(b, strided))
    assert.equal(slurp(a), slurp(b))
    -- a window of a larger image, and a gray image seen through a transpose
    local big = diffuse.full({ 3, 9, 11 }, 0.5)
    big:narrow(2, 3, 5):narrow(3, 2, 7):copy_(img)
    assert.is_true(image.write(b, big:narrow(2, 3, 5):narrow(3, 2, 7)))
    assert.equal(slurp(a), slurp(b))
    local g = img:select(1, 2)
    assert.is_true(image.write(a, g))
    assert.is_true(image.write(b, g:t():contiguous():t()))
    assert.equal(slurp(a), slurp(b))
  end)

  it("rejects bad images and options with errors naming the argument", function()
    local p = dir .. "/x.png"
    assert.matches("bad argument #2 .*image must be %(H, W%), %(C, H, W%) or %(1, C, H, W%), got %[4%]",
      H.error_of(image.write, p, diffuse.zeros(4)))
    assert.matches("a 4%-d image must be %(1, C, H, W%), got %[2x3x4x4%]",
      H.error_of(image.write, p, diffuse.zeros(2, 3, 4, 4)))
    assert.matches("2 channels %(gray %+ alpha%) cannot be written",
      H.error_of(image.write, p, diffuse.zeros(2, 4, 4)))
    assert.matches("C must be 1 %(gray%), 3 %(RGB%) or 4 %(RGBA%), got %[5x4x4%]",
      H.error_of(image.write, p, diffuse.zeros(5, 4, 4)))
    assert.matches("height and width must be", H.error_of(image.write, p, diffuse.zeros(3, 0, 4)))
    assert.matches('bad argument #3 .*opts.range must be "%-1,1" or "0,1", got "0,255"',
      H.error_of(image.write, p, diffuse.zeros(4, 4), { range = "0,255" }))
    assert.matches("opts.range must be a string", H.error_of(image.write, p, diffuse.zeros(4, 4), { range = 1 }))
    assert.matches("unknown option 'rang'", H.error_of(image.write, p, diffuse.zeros(4, 4), { rang = "0,1" }))
    assert.matches("bad argument #3 .*table of options or nil expected",
      H.error_of(image.write, p, diffuse.zeros(4, 4), "0,1"))
    assert.matches("bad argument #2 .*diffuse.Tensor expected", H.error_of(image.write, p, { { 1 } }))
    assert.matches("bad argument #1 .*string expected", H.error_of(image.write, nil, diffuse.zeros(4, 4)))
    assert.matches("bad argument #1 .*string expected", H.error_of(image.read, {}))
    assert.is_false(exists(p))
  end)

  it("returns nil, message for a missing directory and leaves no file", function()
    local p = dir .. "/no/such/dir/x.png"
    local ok, err = image.write(p, diffuse.zeros(4, 4))
    assert.is_nil(ok)
    assert.matches("no/such/dir/x.png: No such file or directory", err)
    assert.is_false(exists(p))
    assert.equal("", listing(dir))
  end)

  it("a failed write keeps the existing file intact and leaves no temporary file", function()
    local p = dir .. "/keep.png"
    assert.is_true(image.write(p, diffuse.full({ 3, 4, 4 }, 0.25)))
    local before = slurp(p)
    -- misuse raises before anything is written
    assert.is_true(H.error_of(image.write, p, diffuse.zeros(2, 4, 4)) ~= "")
    assert.is_true(H.error_of(image.write, p, diffuse.zeros(4, 4), { range = "x" }) ~= "")
    assert.equal(before, slurp(p))
    -- the final rename fails when the target is a directory: nil, message, nothing left over
    assert(os.execute("mkdir '" .. dir .. "/sub'"))
    local ok, err = image.write(dir .. "/sub", diffuse.zeros(4, 4))
    assert.is_nil(ok)
    assert.matches("sub: Is a directory", err)
    assert.equal("keep.png\nsub\n", listing(dir))
    assert.equal("", listing(dir .. "/sub"))
    assert.equal(before, slurp(p))
  end)

  it("returns nil, message for a missing, empty, non-PNG or truncated file", function()
    local ok, err = image.read(dir .. "/missing.png")
    assert.is_nil(ok)
    assert.matches("missing.png: No such file or directory", err)

    spit(dir .. "/empty.png", "")
    ok, err = image.read(dir .. "/empty.png")
    assert.is_nil(ok)
    assert.matches("empty.png: not a PNG file", err)

    spit(dir .. "/text.png", "hello, this is not an image\n")
    ok, err = image.read(dir .. "/text.png")
    assert.is_nil(ok)
    assert.matches("text.png: not a PNG file", err)

    ok, err = image.read(dir)
    assert.is_nil(ok)
    assert.is_string(err)

    -- every proper prefix of a valid file is rejected
    local p = dir .. "/full.png"
    local img = diffuse.zeros(3, 6, 5)
    for k = 1, 3 do for y = 1, 6 do for x = 1, 5 do img:set(k, y, x, (k + y * x) / 40) end end end
    assert.is_true(image.write(p, img, { range = "0,1" }))
    local bytes = slurp(p)
    assert.is_true(image.read(p) ~= nil)
    local cut = dir .. "/cut.png"
    for n = 1, #bytes - 1 do
      spit(cut, bytes:sub(1, n))
      ok, err = image.read(cut)
      assert.is_nil(ok, "prefix of " .. n .. " bytes was accepted")
      assert.matches("cut.png: invalid PNG: ", err)
      if n > 8 then assert.matches("truncated", err, nil, true) end
    end
  end)

  it("returns nil, message for corrupt chunks", function()
    local good = make_png { width = 2, height = 2, color = 0, depth = 8,
      pixel = function(x, y) return { 50 * x + 100 * y } end }
    local p = dir .. "/c.png"
    spit(p, good)
    assert.same({ 0, 50, 100, 150 }, bytes_of(assert(image.read(p))))
    -- a flipped byte inside IHDR's data: CRC mismatch
    spit(p, good:sub(1, 17) .. string.char(good:byte(18) ~ 0x40) .. good:sub(19))
    local ok, err = image.read(p)
    assert.is_nil(ok)
    assert.matches("invalid PNG: .*CRC", err)
    -- IDAT holding data that is not a zlib stream, with a valid CRC
    local bad = "\137PNG\r\n\26\n" .. chunk("IHDR", string.pack(">I4I4BBBBB", 2, 2, 8, 0, 0, 0, 0))
      .. chunk("IDAT", "garbage garbage garbage") .. chunk("IEND", "")
    spit(p, bad)
    ok, err = image.read(p)
    assert.is_nil(ok)
    assert.matches("invalid PNG: ", err)
    -- an impossible header (bit depth 3)
    spit(p, "\137PNG\r\n\26\n" .. chunk("IHDR", string.pack(">I4I4BBBBB", 2, 2, 3, 0, 0, 0, 0)))
    ok, err = image.read(p)
    assert.is_nil(ok)
    assert.matches("invalid PNG: ", err)
  end)

  describe("converts other PNG formats", function()
    local p
    before_each(function() p = dir .. "/in.png" end)

    it("palette to RGB, and palette with tRNS to RGBA", function()
      local o = { width = 3, height = 1, color = 3, depth = 8, plte = { 255, 0, 0, 0, 0, 255, 10, 20, 30 },
        pixel = function(x) return { x } end }
      spit(p, make_png(o))
      local r = assert(image.read(p))
      assert.same({ 3, 1, 3 }, r:shape())
      assert.same({ 255, 0, 10, 0, 0, 20, 0, 255, 30 }, bytes_of(r))
      o.trns = "\128\255"
      spit(p, make_png(o))
      r = assert(image.read(p))
      assert.same({ 4, 1, 3 }, r:shape())
      assert.same({ 255, 0, 10, 0, 0, 20, 0, 255, 30, 128, 255, 255 }, bytes_of(r))
    end)

    it("2-bit palette indices", function()
      spit(p, make_png { width = 5, height = 1, color = 3, depth = 2, plte = { 0, 0, 0, 85, 85, 85, 170, 170, 170, 255, 255, 255 },
        pixel = function(x) return { (x * 3) % 4 } end })
      local r = assert(image.read(p))
      assert.same({ 3, 1, 5 }, r:shape())
      assert.same({ 0, 255, 170, 85, 0 }, bytes_of(r:narrow(1, 2, 1)))
    end)

    it("16-bit gray and RGBA to [0, 1] with 16-bit precision", function()
      local vals = { 0, 1, 771, 40000, 65535 }
      spit(p, make_png { width = 5, height = 1, color = 0, depth = 16, pixel = function(x) return { vals[x + 1] } end })
      local r = assert(image.read(p))
      assert.same({ 1, 1, 5 }, r:shape())
      local want = {}
      for i, v in ipairs(vals) do want[i] = v / 65535 end
      assert.allclose({ { want } }, r, 1e-7, 0)
      spit(p, make_png { width = 1, height = 1, color = 6, depth = 16, pixel = function() return { 65535, 0, 32768, 1 } end })
      assert.allclose({ { { 1 } }, { { 0 } }, { { 32768 / 65535 } }, { { 1 / 65535 } } }, image.read(p), 1e-7, 0)
    end)

    it("gray + alpha, and gray with a tRNS color, to RGBA", function()
      spit(p, make_png { width = 2, height = 1, color = 4, depth = 8, pixel = function(x) return { 10 + x, 200 + x } end })
      local r = assert(image.read(p))
      assert.same({ 4, 1, 2 }, r:shape())
      assert.same({ 10, 11, 10, 11, 10, 11, 200, 201 }, bytes_of(r))
      spit(p, make_png { width = 2, height = 1, color = 0, depth = 8, trns = "\0\5", pixel = function(x) return { 5 + x } end })
      r = assert(image.read(p))
      assert.same({ 4, 1, 2 }, r:shape())
      assert.same({ 5, 6, 5, 6, 5, 6, 0, 255 }, bytes_of(r))
    end)

    it("1-bit gray expanded to 0 and 1", function()
      local bits = { 1, 0, 0, 1, 1, 1, 0, 1, 0, 1 }
      spit(p, make_png { width = 10, height = 1, color = 0, depth = 1, pixel = function(x) return { bits[x + 1] } end })
      assert.allclose({ { bits } }, image.read(p))
    end)

    it("Adam7-interlaced files decode like plain ones", function()
      local o = { width = 5, height = 3, color = 2, depth = 8,
        pixel = function(x, y) return { 10 * x + y, 100 + x, 200 + y } end }
      spit(p, make_png(o))
      local plain = bytes_of(assert(image.read(p)))
      o.interlace = true
      spit(p, make_png(o))
      assert.same(plain, bytes_of(assert(image.read(p))))
      assert.same({ 0, 10, 20, 30, 40, 1, 11, 21, 31, 41, 2, 12, 22, 32, 42 }, { table.unpack(plain, 1, 15) })
    end)
  end)
end)

describe("image.grid", function()
  -- batch of n images (c, h, w) where image i holds the value i everywhere
  local function batch(n, c, h, w)
    local b = diffuse.zeros(n, c, h, w)
    for i = 1, n do b[i]:fill_(i) end
    return b
  end

  -- the grid as rows of strings, one character per pixel: "." for pad, digits for images
  local function picture(g, channel)
    local rows = {}
    for _, row in ipairs(g:select(1, channel or 1):totable()) do
      local s = {}
      for j, v in ipairs(row) do s[j] = (v == -1 or v == 0 or v == 0.5) and "." or tostring(math.tointeger(v)) end
      rows[#rows + 1] = table.concat(s)
    end
    return rows
  end

  it("tiles with padding around every image, default nrow = ceil(sqrt(N))", function()
    local g = image.grid(batch(4, 1, 2, 3), { padding = 1 })
    assert.same({ 1, 7, 9 }, g:shape())
    assert.same({
      ".........",
      ".111.222.",
      ".111.222.",
      ".........",
      ".333.444.",
      ".333.444.",
      ".........",
    }, picture(g))
    -- default padding is 2 and the default pad value -1 (black in the range -1,1)
    g = image.grid(batch(2, 1, 1, 1))
    assert.same({ 1, 5, 8 }, g:shape())
    assert.allclose({ { { -1, -1, -1, -1, -1, -1, -1, -1 }, { -1, -1, -1, -1, -1, -1, -1, -1 },
      { -1, -1, 1, -1, -1, 2, -1, -1 }, { -1, -1, -1, -1, -1, -1, -1, -1 },
      { -1, -1, -1, -1, -1, -1, -1, -1 } } }, g)
  end)

  it("honours nrow, leaves the cells after the last image as padding", function()
    local g = image.grid(batch(5, 1, 1, 2), { nrow = 3, padding = 1 })
    assert.same({
      "..........",
      ".11.22.33.",
      "..........",
      ".44.55....",
      "..........",
    }, picture(g))
    g = image.grid(batch(3, 1, 1, 1), { nrow = 1, padding = 0 })
    assert.same({ "1", "2", "3" }, picture(g))
    g = image.grid(batch(3, 1, 1, 1), { nrow = 10, padding = 0 }) -- nrow > N: one row of N
    assert.same({ "123" }, picture(g))
  end)

  it("uses pad_value, or 0 (black) for range 0,1, on every channel", function()
    local g = image.grid(batch(2, 3, 1, 1), { nrow = 2, padding = 1, pad_value = 0.5 })
    assert.same({ 3, 3, 5 }, g:shape())
    for c = 1, 3 do assert.same({ ".....", ".1.2.", "....." }, picture(g, c)) end
    assert.equal(0.5, g:get(2, 1, 1))
    g = image.grid(batch(1, 1, 1, 1), { range = "0,1", padding = 1 })
    assert.allclose({ { { 0, 0, 0 }, { 0, 1, 0 }, { 0, 0, 0 } } }, g)
  end)

  it("keeps the input's values and accepts non-contiguous batches", function()
    local b = diffuse.zeros(2, 1, 2, 2)
    b[1]:copy_(diffuse.tensor({ { { 0.1, 0.2 }, { 0.3, 0.4 } } }))
    b[2]:copy_(diffuse.tensor({ { { -0.7, 5 }, { 0.6, -0.8 } } }))
    local want = image.grid(b, { padding = 0, nrow = 2 })
    assert.allclose({ { { 0.1, 0.2, -0.7, 5 }, { 0.3, 0.4, 0.6, -0.8 } } }, want)
    local s = H.strided(b)
    assert.is_false(s:is_contiguous())
    assert.allclose(want, image.grid(s, { padding = 0, nrow = 2 }), 0, 0)
  end)

  it("rejects bad batches and options", function()
    assert.matches("bad argument #1 to 'grid' %(batch must be %(N, C, H, W%), got %[3x4x4%]%)",
      H.error_of(image.grid, diffuse.zeros(3, 4, 4)))
    assert.matches("bad argument #1 to 'grid' %(diffuse.Tensor expected, got table%)", H.error_of(image.grid, {}))
    assert.matches("at least one non%-empty image", H.error_of(image.grid, diffuse.zeros(0, 1, 2, 2)))
    local b = diffuse.zeros(2, 1, 2, 2)
    assert.matches("bad argument #2 .*opts.nrow must be a positive integer, got 0", H.error_of(image.grid, b, { nrow = 0 }))
    assert.matches("opts.nrow must be a positive integer, got 1.5", H.error_of(image.grid, b, { nrow = 1.5 }))
    assert.matches("opts.padding must be a non%-negative integer", H.error_of(image.grid, b, { padding = -1 }))
    assert.matches("opts.pad_value must be a number", H.error_of(image.grid, b, { pad_value = "black" }))
    assert.matches('opts.range must be "%-1,1" or "0,1", got "0,255"', H.error_of(image.grid, b, { range = "0,255" }))
    assert.matches("unknown option 'nrows'", H.error_of(image.grid, b, { nrows = 2 }))
    assert.matches("bad argument #3 to 'write_grid' .*unknown option", H.error_of(image.write_grid, "x.png", b, { nrows = 2 }))
    assert.matches("bad argument #1 to 'write_grid'", H.error_of(image.write_grid, b))
  end)

  it("write_grid writes the grid in the requested range", function()
    local dir = tmpdir()
    local b = diffuse.zeros(3, 1, 2, 2)
    b[1]:fill_(0.2); b[2]:fill_(0.6); b[3]:fill_(1)
    local p = dir .. "/grid.png"
    assert.is_true(image.write_grid(p, b, { nrow = 2, padding = 1, range = "0,1" }))
    local r = assert(image.read(p))
    assert.same({ 1, 7, 7 }, r:shape())
    assert.same({ 0, 51, 51, 0, 153, 153, 0 }, bytes_of(r:select(2, 2)))
    assert.same({ 0, 255, 255, 0, 0, 0, 0 }, bytes_of(r:select(2, 5)))
    local ok, err = image.write_grid(dir .. "/none/grid.png", b)
    assert.is_nil(ok)
    assert.matches("No such file or directory", err)
    os.execute("rm -rf '" .. dir .. "'")
  end)
end)
