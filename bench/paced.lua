-- A GET paced to about half the maximum rate: each connection waits `args[1]` ms before
-- each request (wrk 4 has no constant-rate mode). An optional token is args[2].
--   wrk ... -s paced.lua URL -- DELAY_MS [TOKEN]
dofile("report.lua")
local pause = 1
function init(args)
  pause = tonumber(args[1])
  if args[2] then wrk.headers["X-aliyun-ecs-metadata-token"] = args[2] end
end
function delay()
  return pause
end
