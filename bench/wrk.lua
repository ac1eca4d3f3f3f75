-- The one wrk script of `make bench` (bench/harness.py runs it).
-- Arguments after "--": EXPECTED_STATUS EVENTS_PER_REQUEST TAG USERS_PER_THREAD.
-- EVENTS_PER_REQUEST 0 sends the request of the command line (its URL and -H headers);
-- 1 POSTs one usage event a request, more a batch of them, each event with an
-- idempotency key of its own (run tag, thread, counter) for a user of the thread's slice.
-- Any other status than EXPECTED_STATUS is counted, and the first one kept, so that the
-- harness refuses the run; done() prints one line the harness parses.

local threads = {}

function setup(thread)
   thread:set("index", #threads)
   table.insert(threads, thread)
end

function init(args)
   expected = tonumber(args[1])
   events = tonumber(args[2])
   tag = args[3]
   users = tonumber(args[4])
   ok, other, created, counter, first_error = 0, 0, 0, 0, ""
   if events > 0 then
      wrk.method = "POST"
      wrk.headers["Content-Type"] = "application/json"
   end
   fixed = wrk.format()
end

local function event()
   counter = counter + 1
   return string.format(
      '{"user_email":"u%d@bench.example","idempotency_key":"%s-%d-%d","quantity":1}',
      index * users + counter % users, tag, index, counter)
end

function request()
   if events == 0 then
      return fixed
   end
   if events == 1 then
      return wrk.format(nil, nil, nil, event())
   end
   local list = {}
   for i = 1, events do
      list[i] = event()
   end
   return wrk.format(nil, nil, nil, '{"events":[' .. table.concat(list, ",") .. ']}')
end

function response(status, headers, body)
   if status ~= expected then
      other = other + 1
      if first_error == "" then
         first_error = status .. " " .. (string.gsub(string.sub(body, 1, 200), "%s+", " "))
      end
      return
   end
   ok = ok + 1
   if events == 1 then
      created = created + 1
   elseif events > 1 then
      created = created + (tonumber(string.match(body, '"created":(%d+)')) or 0)
   end
end

function done(summary, latency, requests)
   local total = {ok = 0, other = 0, created = 0}
   local first = ""
   for _, thread in ipairs(threads) do
      for name, _ in pairs(total) do
         total[name] = total[name] + thread:get(name)
      end
      if first == "" then
         first = thread:get("first_error")
      end
   end
   local e = summary.errors
   io.write(string.format(
      "BENCH duration_us=%d requests=%d ok=%d other=%d created=%d socket_errors=%d "
      .. "p50_us=%d p99_us=%d\n",
      summary.duration, summary.requests, total.ok, total.other, total.created,
      e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99)))
   if first ~= "" then
      io.write("BENCH-FIRST-ERROR " .. first .. "\n")
   end
end
