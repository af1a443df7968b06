-- Every request is a different SMS on the sample number: its timestamp counts up from
-- SMS_BASE (the bench script gives each run its own), so none is deduplicated.
local n = tonumber(os.getenv("SMS_BASE") or "1700000000")
request = function()
  n = n + 1
  local body = string.format(
    '{"type":"recv-sms","sms":[[0,"1.01",%d,"BankInfo","79001234567","SGVsbG8gV29ybGQ="]]}', n)
  return wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, body)
end
