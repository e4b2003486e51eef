local H = require("helper")
local tmpdir, slurp, spit, exists = H.tmpdir, H.slurp, H.spit, H.exists
local diffuse = H.diffuse
local data = diffuse.data

local REAL_DIR = "/usr/share/datasets/fashion-mnist"

-- IDX bytes: magic 0 0 dtype ndim, big-endian sizes, then the elements (a table of bytes).
local function idx(dims, bytes, dtype)
  local s = { string.pack("BBBB", 0, 0, dtype or 8, #dims) }
  for _, d in ipairs(dims) do s[#s + 1] = string.pack(">I4", d) end
  for _, b in ipairs(bytes) do s[#s + 1] = string.char(b) end
  return table.concat(s)
end

-- Write raw bytes gzip-compressed to path (with the gzip command).
local function write_gz(path, raw)
  spit(path .. ".raw", raw)
  assert(os.execute("gzip -n -c '" .. path .. ".raw' > '" .. path .. "'"))
  os.remove(path .. ".raw")
end

-- A tiny Fashion-MNIST-shaped split in dir: n images of h x w (pixel k of image i is
-- (i * 16 + k) % 256, so values are known) and labels (i * 7) % 10.
local function pixels(n, h, w)
  local px = {}
  for i = 0, n - 1 do
    for k = 0, h * w - 1 do px[#px + 1] = (i * 16 + k) % 256 end
  end
  return px
end

local function labels(n)
  local l = {}
  for i = 0, n - 1 do l[#l + 1] = (i * 7) % 10 end
  return l
end

local function write_split(dir, prefix, n, h, w)
  write_gz(dir .. "/" .. prefix .. "-images-idx3-ubyte.gz", idx({ n, h, w }, pixels(n, h, w)))
  write_gz(dir .. "/" .. prefix .. "-labels-idx1-ubyte.gz", idx({ n }, labels(n)))
end

describe("data.fashion_mnist on small generated files", function()
  local dir
  before_each(function()
    dir = tmpdir()
    write_split(dir, "t10k", 5, 3, 4)
    write_split(dir, "train", 7, 3, 4)
  end)
  after_each(function() os.execute("rm -rf '" .. dir .. "'") end)

  it("reads images as (N, 1, H, W) in [-1, 1] = pixel / 127.5 - 1, labels and classes", function()
    local d = assert(data.fashion_mnist { split = "test", dir = dir })
    assert.same({ 5, 1, 3, 4 }, d.images:shape())
    local want = {}
    for i, p in ipairs(pixels(5, 3, 4)) do want[i] = p / 127.5 - 1 end
    assert.allclose(want, H.flatten(d.images), 1e-7, 0)
    assert.same(labels(5), d.labels)
    assert.equal(math.type(d.labels[2]), "integer")
    assert.equal("test", d.split)
    assert.equal(10, #d.classes)
    assert.equal("T-shirt/top", d.classes[1])
    assert.equal("Ankle boot", d.classes[10])
    local tr = assert(data.fashion_mnist { dir = dir }) -- split defaults to train
    assert.equal("train", tr.split)
    assert.same({ 7, 1, 3, 4 }, tr.images:shape())
  end)

  it("pixel 0 is -1, 255 is 1", function()
    write_gz(dir .. "/t10k-images-idx3-ubyte.gz", idx({ 1, 1, 3 }, { 0, 255, 51 }))
    write_gz(dir .. "/t10k-labels-idx1-ubyte.gz", idx({ 1 }, { 9 }))
    local d = assert(data.fashion_mnist { split = "test", dir = dir })
    assert.allclose({ { { { -1, 1, 51 / 127.5 - 1 } } } }, d.images, 1e-7, 0)
    assert.same({ 9 }, d.labels)
  end)

  it("limit keeps the first n items; a limit above N gives all", function()
    local d = assert(data.fashion_mnist { split = "test", dir = dir, limit = 2 })
    assert.same({ 2, 1, 3, 4 }, d.images:shape())
    assert.same({ 0, 7 }, d.labels)
    local full = assert(data.fashion_mnist { split = "test", dir = dir })
    assert.allclose(full.images:narrow(1, 1, 2), d.images, 0, 0)
    d = assert(data.fashion_mnist { split = "test", dir = dir, limit = 100 })
    assert.same({ 5, 1, 3, 4 }, d.images:shape())
    assert.equal(5, #d.labels)
    assert.equal(3, #assert(data.fashion_mnist { split = "test", dir = dir, limit = 3.0 }).labels)
  end)

  it("reads plain (uncompressed) IDX files too, through read_idx", function()
    local p = dir .. "/plain.idx"
    spit(p, idx({ 2, 3 }, { 1, 2, 3, 4, 5, 255 }))
    assert.allclose({ { 1, 2, 3 }, { 4, 5, 255 } }, assert(data.read_idx(p)), 0, 0)
    assert.allclose({ { 1, 2, 3 } }, assert(data.read_idx(p, 1)), 0, 0)
    assert.same({ 7, 3, 4 }, assert(data.read_idx(dir .. "/train-images-idx3-ubyte.gz")):shape())
  end)

  it("returns nil and the install hint when the files are missing", function()
    local empty = tmpdir()
    local ok, err = data.fashion_mnist { split = "test", dir = empty }
    assert.is_nil(ok)
    assert.equal("Fashion-MNIST not found in " .. empty .. ": install the Debian package dataset-fashion-mnist "
      .. "(sudo apt-get install dataset-fashion-mnist)", err)
    os.execute("rm -rf '" .. empty .. "'")
    os.remove(dir .. "/t10k-labels-idx1-ubyte.gz") -- half a split is missing too
    ok, err = data.fashion_mnist { split = "test", dir = dir }
    assert.is_nil(ok)
    assert.matches("Fashion%-MNIST not found in ", err)
    assert.is_truthy(data.fashion_mnist { split = "train", dir = dir })
  end)

  -- Each case replaces the test split's image (or label) file and expects nil, message.
  local function expect_bad(which, content, pattern, gz)
    local p = dir .. "/t10k-" .. which .. ".gz"
    if gz == false then spit(p, content) else write_gz(p, content) end
    local ok, err = data.fashion_mnist { split = "test", dir = dir }
    assert.is_nil(ok, "accepted: " .. pattern)
    assert.is_string(err)
    assert.matches(pattern, err)
    ok, err = data.fashion_mnist { split = "test", dir = dir, limit = 1 }
    assert.is_nil(ok, "accepted with limit: " .. pattern)
    assert.matches(pattern, err)
    write_split(dir, "t10k", 5, 3, 4) -- restore the good files for the next case
    assert.is_truthy(data.fashion_mnist { split = "test", dir = dir })
  end
  local IMG, LBL = "images-idx3-ubyte", "labels-idx1-ubyte"

  it("rejects a bad magic, element type or dimension count", function()
    expect_bad(IMG, "\1\0\8\3" .. idx({ 5, 3, 4 }, pixels(5, 3, 4)):sub(5), "not an IDX file %(bad magic 01 00%)")
    expect_bad(IMG, "GIF89a and more bytes", "not an IDX file", false)
    expect_bad(IMG, idx({ 5, 3, 4 }, pixels(5, 3, 4), 0x0D), "unsupported IDX element type 0x0D")
    expect_bad(IMG, idx({ 5, 3, 4 }, pixels(5, 3, 4), 0x07), "unknown element type 0x07")
    expect_bad(IMG, idx({ 1, 1, 1, 1, 1 }, { 0 }), "5 dimensions %(1 to 4 supported%)")
    expect_bad(IMG, idx({ 5, 0, 4 }, {}), "dimension 2 has size 0")
    expect_bad(IMG, idx({ 5, 12 }, pixels(5, 3, 4)), "expected %(N, H, W%) images, got 2 dimensions")
    expect_bad(LBL, idx({ 5, 1 }, labels(5)), "expected a 1%-d list of labels")
    expect_bad(IMG, idx({ 0xFFFFFFFF, 28, 28 }, {}), "too large")
  end)

  it("rejects files shorter or longer than their header, in the header or the data", function()
    expect_bad(IMG, "", "truncated %(in the header%)")
    expect_bad(IMG, "\0\0\8\3\0\0\0\5", "truncated %(in the header%)")
    local px = pixels(5, 3, 4)
    expect_bad(IMG, idx({ 5, 3, 4 }, { table.unpack(px, 1, #px - 1) }), "truncated %(in the data%)")
    expect_bad(IMG, idx({ 6, 3, 4 }, px), "truncated %(in the data%)")
    expect_bad(IMG, idx({ 4, 3, 4 }, px), "longer than its IDX header says %(12 extra bytes%)")
    expect_bad(LBL, idx({ 5 }, { 1, 2, 3, 4, 5, 6 }), "1 extra bytes")
  end)

  it("rejects a damaged gzip stream: truncated, or failing its CRC", function()
    local p = dir .. "/t10k-images-idx3-ubyte.gz"
    local gz = slurp(p)
    expect_bad(IMG, gz:sub(1, #gz - 9), "corrupt file: truncated gzip stream", false)
    expect_bad(IMG, gz:sub(1, 30), "", false)
    local crc_at = #gz - 7 -- the 4-byte CRC32 precedes the 4-byte length at the end
    expect_bad(IMG, gz:sub(1, crc_at - 1) .. string.char(gz:byte(crc_at) ~ 0xFF) .. gz:sub(crc_at + 1),
      "corrupt file: incorrect data check", false)
  end)

  it("rejects image and label counts that disagree, and labels outside 0..9", function()
    write_gz(dir .. "/t10k-labels-idx1-ubyte.gz", idx({ 4 }, labels(4)))
    local ok, err = data.fashion_mnist { split = "test", dir = dir }
    assert.is_nil(ok)
    assert.matches("inconsistent: 5 images in .* but 4 labels in ", err)
    ok, err = data.fashion_mnist { split = "test", dir = dir, limit = 2 }
    assert.is_nil(ok)
    assert.matches("5 images in .* but 4 labels", err)
    expect_bad(LBL, idx({ 5 }, { 1, 2, 10, 3, 4 }), "label 3 is 10, expected 0..9")
  end)

  it("raises on bad arguments", function()
    assert.matches("bad argument #1 to 'fashion_mnist' %(split must be \"train\" or \"test\", got \"val\"%)",
      H.error_of(data.fashion_mnist, { split = "val" }))
    assert.matches("split must be", H.error_of(data.fashion_mnist, { split = 1 }))
    for _, bad in ipairs({ 0, -3, 1.5, "10", true }) do
      assert.matches("limit must be a positive integer, got " .. tostring(bad):gsub("%p", "%%%0"),
        H.error_of(data.fashion_mnist, { limit = bad, dir = dir }))
    end
    assert.matches("unknown option 'spilt'", H.error_of(data.fashion_mnist, { spilt = "test" }))
    assert.matches("dir must be a string", H.error_of(data.fashion_mnist, { dir = 3 }))
    assert.matches("table of options or nil expected, got string", H.error_of(data.fashion_mnist, "test"))
    assert.matches("bad argument #1 to 'read_idx'", H.error_of(data.read_idx))
    assert.matches("bad argument #2 to 'read_idx' %(limit must be", H.error_of(data.read_idx, "x", 0))
  end)
end)

describe("data.fashion_mnist on the installed data set", function()
  local present = io.open(REAL_DIR .. "/t10k-labels-idx1-ubyte.gz", "rb")
  if present then present:close() end
  local function need_data()
    if not present then
      pending("Fashion-MNIST is not installed in " .. REAL_DIR .. " (sudo apt-get install dataset-fashion-mnist)")
      return false
    end
    return true
  end

  it("test split: 10000 images in [-1, 1], first label 9 = Ankle boot", function()
    if not need_data() then return end
    local d = assert(data.fashion_mnist { split = "test" })
    assert.same({ 10000, 1, 28, 28 }, d.images:shape())
    assert.equal(10000, #d.labels)
    assert.equal(9, d.labels[1])
    assert.equal("Ankle boot", d.classes[d.labels[1] + 1])
    assert.same({ 9, 2, 1, 1, 6, 1, 4, 6, 5, 7 }, { table.unpack(d.labels, 1, 10) })
    local v = H.flatten(d.images:narrow(1, 1, 16))
    local lo, hi = math.huge, -math.huge
    for _, x in ipairs(v) do
      lo, hi = math.min(lo, x), math.max(hi, x)
      assert.is_true(math.abs((x + 1) * 127.5 - math.floor((x + 1) * 127.5 + 0.5)) < 1e-4, "not a pixel level: " .. x)
    end
    assert.equal(-1, lo)
    assert.equal(1, hi)
    -- the corner pixel of an image is background
    assert.equal(-1, d.images:get(1, 1, 1, 1))
  end)

  it("limit reads the first images of the split", function()
    if not need_data() then return end
    local d = assert(data.fashion_mnist { split = "test", limit = 3 })
    assert.same({ 3, 1, 28, 28 }, d.images:shape())
    assert.same({ 9, 2, 1 }, d.labels)
  end)

  it("train split: 60000 images, 6000 per class", function()
    if not need_data() then return end
    local d = assert(data.fashion_mnist { split = "train" })
    assert.same({ 60000, 1, 28, 28 }, d.images:shape())
    local count = {}
    for _, l in ipairs(d.labels) do count[l] = (count[l] or 0) + 1 end
    for c = 0, 9 do assert.equal(6000, count[c]) end
  end)
end)
