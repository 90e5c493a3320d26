-- wrk script: POST /v1/decisions.evaluate for an action the default pack allows (lookup_policy), with TOKEN, TENANT and AGENT from the environment.
function init(args)
  wrk.method = "POST"
  wrk.path = "/v1/decisions.evaluate"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
  wrk.headers["x-tenant-id"] = os.getenv("TENANT")
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = string.format('{"agentId":"%s","action":"lookup_policy","context":{"claimId":"c-1"}}',
    os.getenv("AGENT"))
end
