-- wrk script for bench/callbacks.py: sends pre-signed requests in order, each exactly once.
--
--   wrk -t1 -c C -d D -s bench/callbacks.lua URL -- FILE RATE
--
-- FILE holds one request a line: method, path, "Name: value" headers, body, separated by
-- tabs (the body is compact JSON, which has no raw tab or newline). RATE is the total
-- requests per second to aim for; 0 sends as fast as the connections allow. One wrk
-- thread only: it keeps "the first N lines were sent" exact, and one thread of wrk
-- drives far more than one Python server can answer.
--
-- Once every line is sent nothing more goes out, and once every answer is in the script
-- ends the run (SIGINT to wrk itself, which wrk takes as "stop now and report"), so no
-- request in flight is cut off. wrk's own runtime is then the sleep it was interrupted
-- in, so the script times the run itself: from the first request written to the last
-- answer read. done() prints one "WRK key=value ..." line that bench/callbacks.py reads.

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
int getpid(void);
int kill(int pid, int sig);
]])
local CLOCK_MONOTONIC, SIGINT = 1, 2
local now_buf = ffi.new("bench_timespec")

local function now_s()
    ffi.C.clock_gettime(CLOCK_MONOTONIC, now_buf)
    return tonumber(now_buf.tv_sec) + tonumber(now_buf.tv_nsec) * 1e-9
end

-- Main state: the thread, for done().
local threads = {}

function setup(thread)
    table.insert(threads, thread)
end

-- Thread state. Globals, so that done() can read them through thread:get().
sent = 0
answered = 0
ok = 0
first_sent_at = 0
last_answer_at = 0
status_counts = ""
local requests = {}
local statuses = {}
local claimed = 0
local interval = 0
local next_slot = nil
-- wrk calls request() once before the run, to check the script; that request is never
-- sent. delay() runs before every real one, so it marks the start.
local started = false

local function split(line)
    local fields = {}
    local start = 1
    while true do
        local tab = string.find(line, "\t", start, true)
        if tab == nil then
            table.insert(fields, string.sub(line, start))
            return fields
        end
        table.insert(fields, string.sub(line, start, tab - 1))
        start = tab + 1
    end
end

function init(args)
    local path, rate = args[1], tonumber(args[2] or "0")
    for line in io.lines(path) do
        if #line > 0 then
            local fields = split(line)
            local headers = {}
            for k = 3, #fields - 1 do
                local name, value = string.match(fields[k], "^([^:]+): (.*)$")
                headers[name] = value
            end
            table.insert(requests, wrk.format(fields[1], fields[2], headers, fields[#fields]))
        end
    end
    if rate > 0 then
        interval = 1 / rate
    end
end

-- Called before each request, because it exists: it paces the run on a fixed schedule
-- (slot k at start + k * interval, whichever connection takes it), and parks a
-- connection for good once every line is spoken for. A line is claimed here rather than
-- in request(), which comes after the wait: by then other connections may have taken
-- the last lines, and request() cannot decline to send.
function delay()
    started = true
    if claimed >= #requests then
        return 3600 * 1000
    end
    claimed = claimed + 1
    if interval == 0 then
        return 0
    end
    local now = now_s()
    if next_slot == nil then
        next_slot = now
    end
    local wait = next_slot - now
    next_slot = next_slot + interval
    if wait <= 0 then
        return 0
    end
    return math.floor(wait * 1000)
end

function request()
    if not started then
        return requests[1]
    end
    sent = sent + 1
    if sent == 1 then
        first_sent_at = now_s()
    end
    return requests[sent]
end

function response(status, headers, body)
    answered = answered + 1
    last_answer_at = now_s()
    if status >= 200 and status < 300 then
        ok = ok + 1
    end
    statuses[status] = (statuses[status] or 0) + 1
    local parts = {}
    for code, count in pairs(statuses) do
        table.insert(parts, code .. ":" .. count)
    end
    status_counts = table.concat(parts, ",")
    if answered >= #requests then
        ffi.C.kill(ffi.C.getpid(), SIGINT)
    end
end

function done(summary, latency, requests)
    local thread = threads[1]
    local seconds = thread:get("last_answer_at") - thread:get("first_sent_at")
    io.write(string.format(
        "WRK seconds=%.6f requests=%d sent=%d answered=%d ok=%d statuses=%s"
            .. " connect_errors=%d read_errors=%d write_errors=%d timeouts=%d"
            .. " p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.1f\n",
        seconds, summary.requests, thread:get("sent"), thread:get("answered"),
        thread:get("ok"), thread:get("status_counts"), summary.errors.connect,
        summary.errors.read, summary.errors.write, summary.errors.timeout,
        latency:percentile(50), latency:percentile(90), latency:percentile(99),
        latency.max, latency.mean
    ))
end
