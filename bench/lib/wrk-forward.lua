-- wrk script for a forward proxy: wrk connects to the URL it is given (the proxy) and sends
-- absolute-form requests for the target given after "--":
--
--   wrk ... -s wrk-forward.lua http://127.0.0.1:PROXY/ -- http://127.0.0.1:ORIGIN/
--
-- Each request is `GET http://127.0.0.1:ORIGIN/ HTTP/1.1` with `Host: 127.0.0.1:ORIGIN`
-- (wrk.format with an absolute path), HTTP/1.1 keep-alive like any other wrk request.
-- Only init() and done() are defined: the request is built once per thread and wrk makes no
-- Lua call per request. done() is wrk-report.lua's (the WRKJSON line).
local src = debug.getinfo(1, "S").source
local dir = src:match("^@(.*)/[^/]*$") or "."
dofile(dir .. "/wrk-report.lua")

init = function(args)
  local target = args[1]
  if not target or not target:match("^http://[^/]+/") then
    error("wrk-forward.lua: give the target URL after --, e.g. -- http://127.0.0.1:8080/")
  end
  wrk.method = "GET"
  wrk.path = target
  wrk.headers["Host"] = target:match("^http://([^/]+)")
end
