-- The soak's steady mix from one instance (bench/soak.py): leaves, listings and `all`, a
-- token PUT and a GET with that token, the RAM credential and the identity document, each
-- connection pacing itself to `delay` ms between requests.
--   wrk ... -s soak.lua URL -- ROLE DELAY_MS
dofile("report.lua")

local role, pause, n, token = "", 1, 0, nil
local paths = {"/latest/meta-data/instance-id", "/latest/meta-data/", "/latest/meta-data/all",
               "/latest/meta-data/hostname", "/latest/dynamic/instance-identity/document",
               "/latest/meta-data/network/interfaces/macs/"}

function init(args)
  role, pause = args[1], tonumber(args[2])
end

function delay()
  return pause
end

function request()
  n = n + 1
  local k = n % 10
  if k == 0 then
    return wrk.format("PUT", "/latest/api/token",
                      {["X-aliyun-ecs-metadata-token-ttl-seconds"] = "300"})
  elseif k == 1 and token then
    return wrk.format("GET", "/latest/meta-data/instance-id",
                      {["X-aliyun-ecs-metadata-token"] = token})
  elseif k == 2 then
    return wrk.format("GET", "/latest/meta-data/ram/security-credentials/" .. role)
  end
  return wrk.format("GET", paths[k % #paths + 1])
end

function response(status, headers, body)
  if headers["X-aliyun-ecs-metadata-token-ttl-seconds"] then
    token = body
  end
end
