-- wrk script: POST /v1/decisions.evaluate (the KLA Control Plane API's example body) with TOKEN, TENANT and AGENT from the environment.
function init(args)
  wrk.method = "POST"
  wrk.path = "/v1/decisions.evaluate"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
  wrk.headers["x-tenant-id"] = os.getenv("TENANT")
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = string.format('{"agentId":"%s","action":"execute_refund","context":{"amount":1250.00,"user_id":"usr_22"}}',
    os.getenv("AGENT"))
end
