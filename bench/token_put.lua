-- Case d: PUT /latest/api/token, a new session token per request (SPEC §4.1).
dofile("report.lua")
wrk.method = "PUT"
wrk.headers["X-aliyun-ecs-metadata-token-ttl-seconds"] = "21600"
