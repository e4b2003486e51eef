-- busted output handler: the usual terminal report, then one line CI can read:
--   tests: N passed, N failed
-- (errors count as failures; pending tests are listed by busted but not counted).
return function(options)
  local busted = require("busted")
  local handler = require("busted.outputHandlers.utfTerminal")(options)
  busted.subscribe({ "suite", "end" }, function()
    local failed = handler.failuresCount + handler.errorsCount
    io.write(("tests: %d passed, %d failed\n"):format(handler.successesCount, failed))
    io.flush()
    return nil, true
  end)
  return handler
end
