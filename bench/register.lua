-- wrk script: POST /v1/agents with a unique name per request (so every request creates an agent).
-- Reads TOKEN and TENANT from the environment.
local counter = 0
local thread_id = 0
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  wrk.method = "POST"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
  wrk.headers["x-tenant-id"] = os.getenv("TENANT")
  wrk.headers["Content-Type"] = "application/json"
end
function request()
  counter = counter + 1
  local body = string.format('{"name":"bench-%s-%d-%d","model":"gpt-4.1","temperature":0.2,"tools":["lookup_policy"]}',
    os.getenv("RUN"), tid, counter)
  return wrk.format(nil, "/v1/agents", nil, body)
end
