local H = require("helper")
local diffuse = H.diffuse
local st = diffuse.safetensors

local tmpfiles = {}
local function tmp()
  local p = os.tmpname()
  tmpfiles[#tmpfiles + 1] = p
  return p
end

local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function spit(path, bytes)
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
end

-- A file made by hand: length prefix, header text and data bytes, exactly as given.
local function raw(header, data)
  local p = tmp()
  spit(p, string.pack("<I8", #header) .. header .. (data or ""))
  return p
end

-- The header text and the data bytes of a file.
local function split(path)
  local s = slurp(path)
  local n = string.unpack("<I8", s)
  return s:sub(9, 8 + n), s:sub(9 + n), n
end

local function f32s(...) return string.pack("<" .. string.rep("f", select("#", ...)), ...) end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function ls(dir)
  local p = io.popen("ls -A '" .. dir .. "' 2>/dev/null")
  local out = {}
  for line in p:lines() do out[#out + 1] = line end
  p:close()
  table.sort(out)
  return out
end

-- Expect load (and info, unless load_only) to fail with a message naming the file and
-- matching pattern.
local function rejects(path, pattern, load_only)
  local t, err = st.load(path)
  assert.is_nil(t)
  assert.is_string(err)
  assert.equal(path .. ": ", err:sub(1, #path + 2), err)
  assert.matches(pattern, err)
  local i, err2 = st.info(path)
  if not load_only then
    assert.is_nil(i)
    assert.matches(pattern, err2)
  end
end

local function entry(dtype, shape, b, e)
  return ('{"dtype":"%s","shape":[%s],"data_offsets":[%d,%d]}'):format(dtype, table.concat(shape, ","), b, e)
end

teardown(function()
  for _, p in ipairs(tmpfiles) do os.remove(p) end
end)

describe("safetensors round trips", function()
  local values = {
    ["1d"] = diffuse.tensor({ 1, -2, 0.5, 3 }),
    ["2d"] = diffuse.tensor({ { 1, 2, 3 }, { -4, 5.25, 6 } }),
    ["3d"] = diffuse.arange(24):reshape(2, 3, 4),
    ["4d"] = diffuse.arange(-60, 60):reshape(2, 3, 4, 5),
  }

  for _, dtype in ipairs({ "F32", "F16", "BF16" }) do
    it("keeps values and shapes of 1-4 dims in " .. dtype, function()
      local p = tmp()
      assert.is_true(st.save(p, values, nil, dtype ~= "F32" and { dtype = dtype } or nil))
      local t, meta = st.load(p)
      assert.same({}, meta)
      local n = 0
      for name, v in pairs(values) do
        n = n + 1
        assert.same(v:shape(), t[name]:shape())
        assert.allclose(v, t[name], 0, 0) -- all these values are exact in 8 mantissa bits
      end
      for _ in pairs(t) do n = n - 1 end
      assert.equal(0, n)
      local info = st.info(p)
      assert.equal(dtype, info.tensors["3d"].dtype)
      assert.same({ 2, 3, 4 }, info.tensors["3d"].shape)
    end)

    it("writes non-contiguous tensors contiguously in " .. dtype, function()
      local p = tmp()
      local src = {}
      for name, v in pairs(values) do src[name] = H.strided(v) end
      assert.is_false(src["2d"]:is_contiguous())
      assert.is_false(src["1d"]:is_contiguous())
      assert.is_true(st.save(p, src, {}, { dtype = dtype }))
      local t = st.load(p)
      for name, v in pairs(values) do assert.allclose(v, t[name], 0, 0) end
    end)
  end

  it("rounds F32 values to the nearest F16 and BF16 value", function()
    local x = diffuse.tensor({ 0.1, 1 / 3, 1000.1, -2.7182817 })
    for dtype, rtol in pairs({ F16 = 2 ^ -11, BF16 = 2 ^ -8 }) do
      local p = tmp()
      assert.is_true(st.save(p, { x = x }, nil, { dtype = dtype }))
      local y = st.load(p).x
      assert.allclose(x, y, 0, rtol)
      assert.is_false(H.close(x, y, 0, rtol / 4), dtype .. " should lose precision")
    end
    local p = tmp()
    assert.is_true(st.save(p, { x = x }, nil))
    assert.allclose(x, st.load(p).x, 0, 0)
  end)

  it("keeps names with unicode, quotes, backslashes and control characters", function()
    local names = { "ünïcødé 😀", 'quo"te', "back\\slash", "new\nline\ttab", "nul\0byte", "", "/", "a.b.c" }
    local src = {}
    for i, n in ipairs(names) do src[n] = diffuse.full({ 1 }, i) end
    local p = tmp()
    assert.is_true(st.save(p, src, nil))
    local header = split(p)
    assert.matches('"quo\\"te"', header, 1, true)
    assert.matches('"new\\nline\\ttab"', header, 1, true)
    assert.matches('"nul\\u0000byte"', header, 1, true)
    assert.matches('"ünïcødé 😀"', header, 1, true)
    local t = st.load(p)
    for i, n in ipairs(names) do
      assert.is_not_nil(t[n], n)
      assert.equal(i, t[n]:get(1))
    end
  end)

  it("keeps metadata with escapes and reads it without the data", function()
    local meta = { format = "pt", ["k\"ey"] = 'va"l\\ue\n', ["ünï"] = "cødé", empty = "" }
    local p = tmp()
    assert.is_true(st.save(p, { w = diffuse.ones(2, 2) }, meta))
    local _, m = st.load(p)
    assert.same(meta, m)
    local info = st.info(p)
    assert.same(meta, info.metadata)
    assert.same({ w = { dtype = "F32", shape = { 2, 2 }, offsets = { 0, 16 } } }, info.tensors)
  end)

  it("writes a deterministic file: names sorted, header padded with spaces to 8 bytes", function()
    local src = { zeta = diffuse.ones(3), alpha = diffuse.zeros(1, 2), mid = diffuse.ones(1) }
    local p1, p2 = tmp(), tmp()
    assert.is_true(st.save(p1, src, { b = "2", a = "1" }))
    assert.is_true(st.save(p2, src, { a = "1", b = "2" }))
    assert.equal(slurp(p1), slurp(p2))
    local header, data, n = split(p1)
    assert.equal(0, n % 8)
    local json = header:gsub(" +$", "")
    assert.equal(
      '{"__metadata__":{"a":"1","b":"2"},' ..
      '"alpha":' .. entry("F32", { 1, 2 }, 0, 8) .. ',' ..
      '"mid":' .. entry("F32", { 1 }, 8, 12) .. ',' ..
      '"zeta":' .. entry("F32", { 3 }, 12, 24) .. '}', json)
    assert.equal(n - #json, #header - #json)
    assert.truthy(#header - #json < 8)
    assert.equal(f32s(0, 0, 1, 1, 1, 1), data)
  end)

  it("saves an empty table of tensors and empty (0-element) tensors", function()
    local p = tmp()
    assert.is_true(st.save(p, {}, nil))
    local t, m = st.load(p)
    assert.same({}, t)
    assert.same({}, m)
    assert.is_true(st.save(p, { e = diffuse.zeros(0, 3) }, nil, { dtype = "F16" }))
    local info = st.info(p)
    assert.same({ 0, 0 }, info.tensors.e.offsets)
    assert.same({ 0, 3 }, st.load(p).e:shape())
    -- An empty tensor whose other dimensions the format cannot describe is refused, not written.
    local ok, err = st.save(p, { e = diffuse.zeros(0, 2 ^ 62) }, nil)
    assert.is_nil(ok)
    assert.matches("tensor 'e': shape is too large for the format", err)
    assert.same({ 0, 3 }, st.load(p).e:shape()) -- the previous file is intact
    assert.is_true(st.save(p, { e = diffuse.zeros(0, 2 ^ 60) }, nil))
    assert.same({ 0, 2 ^ 60 }, st.info(p).tensors.e.shape)
  end)
end)

describe("safetensors F16 and BF16 rounding", function()
  -- Bits of each F16 value written for the given float32 inputs.
  local function f16_bits(vals, dtype)
    local p = tmp()
    assert.is_true(st.save(p, { x = diffuse.tensor(vals) }, nil, { dtype = dtype or "F16" }))
    local _, data = split(p)
    local out = {}
    for i = 1, #vals do out[i] = string.unpack("<I2", data, 2 * i - 1) end
    return out, st.load(p).x:totable()
  end

  it("saturates to infinity from 65520 up, keeps 65504", function()
    local bits, back = f16_bits({ 65504, 65519, 65520, 1e6, -65520, math.huge, -math.huge })
    assert.same({ 0x7bff, 0x7bff, 0x7c00, 0x7c00, 0xfc00, 0x7c00, 0xfc00 }, bits)
    assert.same({ 65504, 65504, math.huge, math.huge, -math.huge, math.huge, -math.huge }, back)
  end)

  it("rounds ties to even, including into the exponent", function()
    local bits = f16_bits({ 1 + 2 ^ -11, 1 + 3 * 2 ^ -11, 1 + 2 ^ -11 + 2 ^ -20, 2 - 2 ^ -12, 2048 + 1, 2048 + 3 })
    assert.same({ 0x3c00, 0x3c02, 0x3c01, 0x4000, 0x6800, 0x6802 }, bits)
  end)

  it("writes subnormals, signed zeros and NaN right", function()
    local tiny = 2 ^ -24
    local bits, back = f16_bits({ tiny, 2 ^ -25, 3 * 2 ^ -26, 3 * 2 ^ -25, 2 ^ -14, 2 ^ -14 - tiny, 1e-8,
      -0.0, -tiny, 0 / 0 })
    assert.same({ 0x0001, 0x0000, 0x0001, 0x0002, 0x0400, 0x03ff, 0x0000, 0x8000, 0x8001 }, { table.unpack(bits, 1, 9) })
    assert.equal(0x7c00, bits[10] & 0x7c00)
    assert.is_true(bits[10] & 0x03ff ~= 0)
    assert.equal(tiny, back[1])
    assert.equal(2 * tiny, back[4])
    assert.equal(2 ^ -14 - tiny, back[6])
    assert.equal(-math.huge, 1 / back[8]) -- negative zero survives
    assert.is_true(back[10] ~= back[10])
  end)

  it("BF16 rounds to nearest even and overflows to infinity", function()
    local bits, back = f16_bits({ 1, 1 + 2 ^ -8, 1 + 3 * 2 ^ -8, 3.4028234e38, -0.0, 0 / 0 }, "BF16")
    assert.same({ 0x3f80, 0x3f80, 0x3f82, 0x7f80, 0x8000 }, { table.unpack(bits, 1, 5) })
    assert.equal(0x7f80, bits[6] & 0x7f80)
    assert.is_true(bits[6] & 0x7f ~= 0)
    assert.equal(math.huge, back[4])
  end)
end)

describe("safetensors files written by hand", function()
  it("reads a byte-by-byte layout: header, offsets relative to the data buffer", function()
    local header = '{"b":' .. entry("F32", { 2 }, 24, 32) .. ', "__metadata__" : {"who":"hand"},\n' ..
      '"a":' .. entry("F32", { 2, 3 }, 0, 24) .. '}   '
    local p = raw(header, f32s(1, 2, 3, 4, 5, 6, -7.5, 8))
    local t, m = st.load(p)
    assert.same({ { 1, 2, 3 }, { 4, 5, 6 } }, t.a:totable())
    assert.same({ -7.5, 8 }, t.b:totable())
    assert.same({ who = "hand" }, m)
    local info = st.info(p)
    assert.same({ 24, 32 }, info.tensors.b.offsets)
    assert.equal(#header, info.header_size)
    assert.equal(32, info.data_size)
  end)

  it("converts F64, F16, BF16, integers, BOOL and F8 to float32", function()
    local data = string.pack("<dd", 2.5, -1e300) .. string.pack("<I2I2", 0x3c00, 0xc000) ..
      string.pack("<I2", 0x4049) .. string.pack("<i8i4i2b", -3, 70000, -300, -5) ..
      string.pack("<I8I4I2B", 1 << 40, 4000000000, 65535, 255) .. "\0\1\7" .. "\56\60"
    local h = '{"f64":' .. entry("F64", { 2 }, 0, 16) .. ',"f16":' .. entry("F16", { 2 }, 16, 20) ..
      ',"bf16":' .. entry("BF16", { 1 }, 20, 22) ..
      ',"i64":' .. entry("I64", { 1 }, 22, 30) .. ',"i32":' .. entry("I32", { 1 }, 30, 34) ..
      ',"i16":' .. entry("I16", { 1 }, 34, 36) .. ',"i8":' .. entry("I8", { 1 }, 36, 37) ..
      ',"u64":' .. entry("U64", { 1 }, 37, 45) .. ',"u32":' .. entry("U32", { 1 }, 45, 49) ..
      ',"u16":' .. entry("U16", { 1 }, 49, 51) .. ',"u8":' .. entry("U8", { 1 }, 51, 52) ..
      ',"bool":' .. entry("BOOL", { 3 }, 52, 55) .. ',"e4m3":' .. entry("F8_E4M3", { 1 }, 55, 56) ..
      ',"e5m2":' .. entry("F8_E5M2", { 1 }, 56, 57) .. '}'
    local t = assert(st.load(raw(h, data)))
    assert.same({ 2.5, -math.huge }, t.f64:totable())
    assert.same({ 1, -2 }, t.f16:totable())
    assert.allclose({ 3.140625 }, t.bf16:totable(), 0, 0)
    assert.same({ -3 }, t.i64:totable())
    assert.same({ 70000 }, t.i32:totable())
    assert.same({ -300 }, t.i16:totable())
    assert.same({ -5 }, t.i8:totable())
    assert.same({ 2 ^ 40 }, t.u64:totable())
    assert.same({ 4000000000 }, t.u32:totable())
    assert.same({ 65535 }, t.u16:totable())
    assert.same({ 255 }, t.u8:totable())
    assert.same({ 0, 1, 1 }, t.bool:totable())
    assert.same({ 1 }, t.e4m3:totable())
    assert.same({ 1 }, t.e5m2:totable())
  end)

  it("loads a 0-dim scalar as shape (1); info keeps its empty shape", function()
    local p = raw('{"s":' .. entry("F32", {}, 0, 4) .. '}', f32s(42))
    assert.same({ 1 }, st.load(p).s:shape())
    assert.same({ 42 }, st.load(p).s:totable())
    assert.same({}, st.info(p).tensors.s.shape)
  end)

  it("rejects more than 4 dims in load, naming the tensor; info describes it", function()
    local p = raw('{"big5":' .. entry("U8", { 1, 1, 1, 1, 2 }, 0, 2) .. '}', "\1\2")
    rejects(p, "tensor 'big5' has 5 dimensions; diffuse tensors have 1 to 4", true)
    assert.same({ 1, 1, 1, 1, 2 }, st.info(p).tensors.big5.shape)
  end)

  it("ignores unknown fields in a tensor entry", function()
    local p = raw('{"a":{"extra":[1,{"x":null}],"dtype":"F32","shape":[1],"data_offsets":[0,4],"z":true}}', f32s(3))
    assert.same({ 3 }, st.load(p).a:totable())
  end)
end)

describe("safetensors validation", function()
  local ok_entry = '"a":' .. entry("F32", { 1 }, 0, 4)
  local function json(body) return raw(body, f32s(1)) end

  it("missing file, directory, short file, bad header length", function()
    local missing = "/nonexistent-dir-for-diffuse/x.safetensors"
    local t, err = st.load(missing)
    assert.is_nil(t)
    assert.matches("^/nonexistent%-dir%-for%-diffuse/x.safetensors: No such file", err)
    rejects("/tmp", "not a regular file")
    local p = tmp()
    spit(p, "\4\0\0\0\0")
    rejects(p, "file is too short %(5 bytes%)")
    spit(p, "")
    rejects(p, "file is too short %(0 bytes%)")
    spit(p, string.pack("<I8", 100) .. "{}")
    rejects(p, "header length 100 is larger than the rest of the file %(2 bytes%)")
    spit(p, string.pack("<I8", 1 << 40) .. "{}")
    rejects(p, "header length 1099511627776 exceeds the limit of 100000000 bytes")
    spit(p, string.pack("<I8", -1) .. "{}")
    rejects(p, "exceeds the limit")
    rejects(raw(""), "header is empty")
    rejects(raw("   "), "header is empty")
  end)

  it("invalid JSON: trailing garbage, unterminated strings, bad escapes and numbers", function()
    rejects(json("{" .. ok_entry .. "} x"), "not valid JSON.*unexpected characters after the header object")
    rejects(json("{" .. ok_entry .. "}{}"), "unexpected characters after the header object")
    rejects(json("{" .. ok_entry .. "}\0"), "unexpected characters")
    rejects(json("{" .. ok_entry), "not valid JSON.*',' or '}' expected")
    rejects(json('{"a'), "unterminated string")
    rejects(json('{"a\\"}'), "unterminated string")
    rejects(json('{"a\\x":1}'), "bad escape sequence")
    rejects(json('{"a\\u12G4":1}'), "bad \\u escape")
    rejects(json('{"a\\u12"}'), "bad \\u escape")
    rejects(json('{"\\ud800":1}'), "unpaired high surrogate")
    rejects(json('{"\\ud800\\u0041":1}'), "unpaired high surrogate")
    rejects(json('{"\\udc00\\ud800":1}'), "unpaired low surrogate")
    rejects(json('{"a\tb":1}'), "control character in a string")
    rejects(json('{"\xff":1}'), "invalid UTF%-8")
    rejects(json('{"\xc0\xaf":1}'), "invalid UTF%-8") -- overlong '/'
    rejects(json('{"\xed\xa0\x80":1}'), "invalid UTF%-8") -- encoded surrogate
    rejects(json('{"a":{"dtype":"F32","shape":[01],"data_offsets":[0,4]}}'), "not valid JSON")
    rejects(json('{"a":{"dtype":"F32","shape":[1,],"data_offsets":[0,4]}}'), "not valid JSON")
    rejects(json("{'a':1}"), "not valid JSON.*string key expected")
    rejects(json('\xef\xbb\xbf{}'), "not valid JSON") -- a byte order mark
    rejects(json('{"a":{"x":tru,' .. ok_entry:sub(5)), "not valid JSON")
  end)

  it("limits nesting depth to 64 levels", function()
    -- The header object is level 1, a tensor entry level 2, a field's value level 3.
    local function nested(n)
      return json('{"a":{"x":' .. string.rep("[", n) .. string.rep("]", n) .. ',"dtype":"F32","shape":[1],"data_offsets":[0,4]}}')
    end
    assert.is_table(st.load(nested(62)))
    rejects(nested(63), "nested deeper than 64 levels")
    rejects(nested(1000), "nested deeper than 64 levels")
    rejects(json(string.rep("[", 64) .. string.rep("]", 64)), "header is not a JSON object")
    rejects(json(string.rep("[", 65) .. string.rep("]", 65)), "nested deeper than 64 levels")
  end)

  it("a header that is not an object", function()
    rejects(json("[1,2]"), "header is not a JSON object")
    rejects(json('"a"'), "header is not a JSON object")
    rejects(json("x"), "not valid JSON")
  end)

  it("duplicate tensor names, metadata keys and fields", function()
    rejects(raw("{" .. ok_entry .. "," .. ok_entry .. "}", f32s(1)), "duplicate tensor name 'a'")
    rejects(raw('{"\\u0061":' .. entry("F32", { 1 }, 0, 4) .. "," .. ok_entry .. "}", f32s(1)),
      "duplicate tensor name 'a'")
    rejects(json('{"__metadata__":{"k":"1","k":"2"},' .. ok_entry .. "}"), "duplicate __metadata__ key 'k'")
    rejects(json('{"__metadata__":{},"__metadata__":{},' .. ok_entry .. "}"), 'duplicate key "__metadata__"')
    rejects(json('{"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}'),
      "tensor 'a': duplicate field \"dtype\"")
  end)

  it("missing or wrongly typed fields", function()
    rejects(json('{"a":{"shape":[1],"data_offsets":[0,4]}}'), "tensor 'a': missing \"dtype\"")
    rejects(json('{"a":{"dtype":"F32","data_offsets":[0,4]}}'), "tensor 'a': missing \"shape\"")
    rejects(json('{"a":{"dtype":"F32","shape":[1]}}'), "tensor 'a': missing \"data_offsets\"")
    rejects(json('{"a":[1]}'), "tensor 'a': expected an object with dtype, shape and data_offsets")
    rejects(json('{"a":{"dtype":32,"shape":[1],"data_offsets":[0,4]}}'), "tensor 'a': dtype is not a string")
    rejects(json('{"a":{"dtype":"F32","shape":1,"data_offsets":[0,4]}}'), "tensor 'a': shape is not an array")
    rejects(json('{"a":{"dtype":"F32","shape":["1"],"data_offsets":[0,4]}}'), "tensor 'a': shape entry 1 is not a number")
    rejects(json('{"a":{"dtype":"F32","shape":[1],"data_offsets":{}}}'), "tensor 'a': data_offsets is not an array")
    rejects(json('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}}'), "data_offsets must have 2 entries")
    rejects(json('{"a":{"dtype":"F32","shape":[1],"data_offsets":[]}}'), "data_offsets must have 2 entries")
    rejects(json('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}'), "data_offsets must have 2 entries")
    rejects(json('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,null]}}'), "data_offsets%[2%] is not a number")
  end)

  it("unknown dtypes", function()
    rejects(json('{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}}'), "tensor 'a': unknown or unsupported dtype 'Q4'")
    rejects(json('{"a":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}}'), "unknown or unsupported dtype 'f32'")
  end)

  it("negative, non-integer and huge shape entries; size overflow", function()
    rejects(json('{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}'), "tensor 'a': shape entry 1 is negative")
    rejects(json('{"a":{"dtype":"F32","shape":[1,-0],"data_offsets":[0,4]}}'), "shape entry 2 is negative zero")
    rejects(json('{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}'), "shape entry 1 is not an integer")
    rejects(json('{"a":{"dtype":"F32","shape":[1e0],"data_offsets":[0,4]}}'), "shape entry 1 is not an integer")
    rejects(json('{"a":{"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,4]}}'),
      "shape entry 1 is too large")
    rejects(json('{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}'),
      "tensor 'a': shape is too large %(element count %* dtype size overflows%)")
    rejects(json('{"a":{"dtype":"F64","shape":[2305843009213693952,4],"data_offsets":[0,4]}}'), "overflows")
    rejects(json('{"a":{"dtype":"F32","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}}'), "overflows")
    rejects(json('{"a":{"dtype":"F32","shape":[1],"data_offsets":[-1,4]}}'), "data_offsets%[1%] is negative")
  end)

  it("data_offsets that do not match the shape or leave the buffer", function()
    rejects(json('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}'),
      "tensor 'a': data_offsets %[0, 4%] span 4 bytes but its shape and dtype F32 need 8")
    rejects(json('{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}'), "end before they begin")
    rejects(json('{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}'),
      "tensor 'a': data_offsets %[4, 8%] go past the end of the data buffer %(4 bytes%)")
    rejects(raw('{"a":' .. entry("F32", { 4 }, 0, 16) .. '}', f32s(1, 2, 3)), "go past the end.*truncated")
  end)

  it("overlapping tensors, holes and trailing bytes", function()
    rejects(raw('{"a":' .. entry("U8", { 2 }, 0, 2) .. ',"b":' .. entry("U8", { 2 }, 1, 3) .. '}', "123"),
      "tensors 'a' and 'b' overlap")
    rejects(raw('{"a":' .. entry("U8", { 2 }, 0, 2) .. ',"b":' .. entry("U8", { 2 }, 0, 2) .. '}', "12"),
      "overlap")
    rejects(raw('{"a":' .. entry("U8", { 1 }, 0, 1) .. ',"b":' .. entry("U8", { 1 }, 2, 3) .. '}', "123"),
      "hole in the data buffer: bytes 1%.%.2 before tensor 'b'")
    rejects(raw('{"a":' .. entry("U8", { 1 }, 1, 2) .. '}', "12"), "hole in the data buffer: bytes 0%.%.1")
    rejects(raw('{"a":' .. entry("U8", { 1 }, 0, 1) .. '}', "12"), "data buffer has 2 bytes but the tensors cover 1")
    rejects(raw("{}", "x"), "1 trailing bytes")
    rejects(raw('{"a":' .. entry("U8", { 2 }, 0, 2) .. ',"z":' .. entry("U8", { 0 }, 1, 1) .. '}', "12"), "overlap")
  end)

  it("metadata that is not an object of strings", function()
    rejects(json('{"__metadata__":{"n":1},' .. ok_entry .. "}"), "__metadata__ value for key 'n' is not a string")
    rejects(json('{"__metadata__":{"n":null},' .. ok_entry .. "}"), "__metadata__ value for key 'n' is not a string")
    rejects(json('{"__metadata__":["a"],' .. ok_entry .. "}"), "__metadata__ is not an object of string values")
    rejects(json('{"__metadata__":"x",' .. ok_entry .. "}"), "__metadata__ is not an object")
  end)

  it("inputs found by fuzzing return nil, message (or load, when valid)", function()
    local dir = "spec/data/safetensors/fuzz/"
    local files = ls(dir)
    assert.truthy(#files >= 1, "no fuzz inputs in " .. dir)
    for _, f in ipairs(files) do
      local t, err = st.load(dir .. f)
      local i, err2 = st.info(dir .. f)
      if f:match("^ok%-") then
        assert.is_table(t, f .. ": " .. tostring(err))
        assert.is_table(i, f .. ": " .. tostring(err2))
      else
        assert.is_nil(t, f)
        assert.is_string(err, f)
        assert.equal(dir .. f .. ": ", err:sub(1, #dir + #f + 2))
        assert.truthy(#err > #dir + #f + 10, err)
      end
    end
  end)
end)

describe("safetensors save", function()
  it("checks its arguments", function()
    local p = tmp()
    local x = diffuse.ones(2)
    assert.matches("bad argument #1 .*string expected", H.error_of(st.save, nil, { x = x }))
    assert.matches("bad argument #2 .*table expected", H.error_of(st.save, p, x))
    assert.matches("bad argument #2 .*tensor names must be strings %(got a number key%)", H.error_of(st.save, p, { x }))
    assert.matches("bad argument #2 .*tensors%['x'%] is not a live diffuse.Tensor %(got number%)",
      H.error_of(st.save, p, { x = 1 }))
    local closed = diffuse.ones(1)
    closed:close()
    assert.matches("is not a live diffuse.Tensor", H.error_of(st.save, p, { c = closed }))
    assert.matches("'__metadata__' is reserved", H.error_of(st.save, p, { __metadata__ = x }))
    assert.matches("not valid UTF%-8", H.error_of(st.save, p, { ["\xff"] = x }))
    assert.matches("bad argument #3 .*table expected", H.error_of(st.save, p, { x = x }, "meta"))
    assert.matches("bad argument #3 .*metadata value for 'k' must be a string %(got number%)",
      H.error_of(st.save, p, { x = x }, { k = 1 }))
    assert.matches("bad argument #3 .*metadata keys must be strings %(got a number key%)",
      H.error_of(st.save, p, { x = x }, { "v" }))
    assert.matches("bad argument #3 .*valid UTF%-8", H.error_of(st.save, p, { x = x }, { k = "\xc3" }))
    assert.matches('bad argument #4 .*opts.dtype must be "F32", "F16" or "BF16"',
      H.error_of(st.save, p, { x = x }, nil, { dtype = "F64" }))
    assert.matches("bad argument #4 .*unknown option 'dtpye'", H.error_of(st.save, p, { x = x }, nil, { dtpye = "F16" }))
    assert.matches("bad argument #1 .*string expected", H.error_of(st.load, {}))
    assert.matches("bad argument #1 .*string expected", H.error_of(st.info))
  end)

  it("into a missing directory returns nil, message and leaves nothing", function()
    local dir = os.tmpname()
    os.remove(dir) -- a name that does not exist
    local ok, err = st.save(dir .. "/sub/x.safetensors", { x = diffuse.ones(2) }, nil)
    assert.is_nil(ok)
    assert.matches("^" .. dir:gsub("%p", "%%%0") .. "/sub/x.safetensors: No such file or directory", err)
    assert.is_false(exists(dir))
  end)

  it("a failed save leaves the existing file intact and no temporary file", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert.is_true(os.execute("mkdir '" .. dir .. "'"))
    local p = dir .. "/model.safetensors"
    assert.is_true(st.save(p, { w = diffuse.arange(6) }, { v = "1" }))
    local before = slurp(p)
    -- Argument errors are raised before anything is written.
    assert.truthy(H.error_of(st.save, p, { w = diffuse.ones(2), bad = "x" }) ~= "")
    assert.truthy(H.error_of(st.save, p, { w = diffuse.ones(2) }, { v = 2 }) ~= "")
    assert.equal(before, slurp(p))
    -- An I/O failure: the target is a (non-empty) directory, so the final rename fails.
    local sub = dir .. "/sub.safetensors"
    assert.is_true(os.execute("mkdir '" .. sub .. "' && touch '" .. sub .. "/keep'"))
    local ok, err = st.save(sub, { w = diffuse.ones(2) }, nil)
    assert.is_nil(ok)
    assert.matches("sub.safetensors: ", err, 1, true)
    assert.same({ "model.safetensors", "sub.safetensors" }, ls(dir))
    assert.same({ "keep" }, ls(sub))
    -- A successful save replaces the file whole.
    assert.is_true(st.save(p, { w = diffuse.ones(1) }, nil))
    assert.same({ 1 }, st.load(p).w:totable())
    assert.same({ "model.safetensors", "sub.safetensors" }, ls(dir))
    os.execute("rm -r '" .. dir .. "'")
  end)
end)
