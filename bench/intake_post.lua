-- wrk script for bench/run.py and bench/bench_intake.py: POST distinct contract-shaped
-- callbacks with Basic auth.
--   wrk -t1 -c32 -d10s -s bench/intake_post.lua URL -- PREFIX BASE64_USER_COLON_PASSWORD [EVENTS]
-- EVENTS (default 1) is the number of events in each body's array (a provider batch).
-- Each request carries a new message_uuid (PREFIX-thread-counter) so none is a duplicate, and a
-- "sent_at" field (epoch seconds, microsecond resolution, taken just before the request is
-- written) that the bench receiver subtracts from its arrival time for end-to-end latency.
-- The contract keeps unknown fields, and payload "original" forwards them byte for byte.
-- done() prints one line "WRK_JSON {...}" that the Python side parses.

local ffi = require("ffi")
ffi.cdef[[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clock_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")

local function now()
  ffi.C.clock_gettime(0, ts) -- CLOCK_REALTIME, the clock Python's time.time() reads
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end

local threads = {}
local counter = 0
local prefix = "bench"
local per_request = 1

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
end

function init(args)
  prefix = args[1] or "bench"
  per_request = tonumber(args[3] or "1") or 1
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if args[2] and args[2] ~= "" then
    wrk.headers["Authorization"] = "Basic " .. args[2]
  end
end

local EVENT = '{"message_uuid":"%s-%d-%d","channel_type":"SMS","callback_event":"delivered",'
  .. '"status":"delivered","status_time":"2020-10-16T18:51:13Z","sent_at":%.6f}'

function request()
  local sent = now()
  local parts = {}
  for i = 1, per_request do
    counter = counter + 1
    parts[i] = string.format(EVENT, prefix, thread_id or 0, counter, sent)
  end
  return wrk.format(nil, nil, nil, "[" .. table.concat(parts, ",") .. "]")
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
