-- wrk script for bench/bench_intake.py: POST distinct contract-shaped callbacks with Basic auth.
--   wrk -t1 -c32 -d10s -s bench/intake_post.lua URL -- PREFIX BASE64_USER_COLON_PASSWORD
-- Each request carries a new message_uuid (PREFIX-thread-counter) so none is a duplicate.
-- done() prints one line "WRK_JSON {...}" that bench_intake.py parses.

local threads = {}
local counter = 0
local prefix = "bench"

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
end

function init(args)
  prefix = args[1] or "bench"
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if args[2] and args[2] ~= "" then
    wrk.headers["Authorization"] = "Basic " .. args[2]
  end
end

function request()
  counter = counter + 1
  local body = string.format(
    '[{"message_uuid":"%s-%d-%d","channel_type":"SMS","callback_event":"delivered",'
      .. '"status":"delivered","status_time":"2020-10-16T18:51:13Z"}]',
    prefix, thread_id or 0, counter)
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"status_errors":%d,"connect_errors":%d,'
      .. '"read_errors":%d,"write_errors":%d,"timeouts":%d,"p50_us":%d,"p99_us":%d,'
      .. '"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, latency.mean))
end
