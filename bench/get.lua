-- wrk script: authenticated GET (path from the command line), TOKEN and TENANT from the environment.
function init(args)
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
  wrk.headers["x-tenant-id"] = os.getenv("TENANT")
end
