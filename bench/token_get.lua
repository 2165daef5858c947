-- Case c: a GET carrying a session token (hardened mode); the token is the script argument:
--   wrk ... -s token_get.lua URL -- TOKEN
dofile("report.lua")
function init(args)
  wrk.headers["X-aliyun-ecs-metadata-token"] = args[1]
end
