-- Every request is a different SMS (its timestamp counts up), so none is deduplicated.
local n = 0
request = function()
  n = n + 1
  local body = string.format(
    '{"type":"recv-sms","sms":[[0,"1.01",%d,"BankInfo","79001234567","SGVsbG8gV29ybGQ="]]}',
    1700000000 + n)
  return wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, body)
end
