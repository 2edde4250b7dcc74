-- Tests of deploy/argocd/health.lua, the Argo CD health check of ClickHeatmapPipeline.
--
-- Run with a Lua 5.1 interpreter (Argo CD's gopher-lua implements Lua 5.1) from the repository
-- root, or through tests/argocd/run.sh:
--   lua5.1 tests/argocd/test_health.lua [repository root]
-- Prints one line per case and a closing "N passed, M failed"; exits non-zero on any failure.

local root = arg and arg[1] or "."
local healthPath = root .. "/deploy/argocd/health.lua"
local argocdCmPath = root .. "/examples/argocd/argocd-cm-health.yaml"

local function readFile(path)
  local file = assert(io.open(path, "r"))
  local text = file:read("*a")
  file:close()
  return text
end

-- The check runs in an environment holding only what Argo CD's Lua VM offers (the base library,
-- string, table and math) plus `obj`, so a script that reaches for io/os/require fails here too.
local chunk = assert(loadfile(healthPath))

local function sandbox(obj)
  return {
    obj = obj,
    ipairs = ipairs, pairs = pairs, next = next, type = type, tostring = tostring,
    tonumber = tonumber, error = error, pcall = pcall, select = select, unpack = unpack,
    string = string, table = table, math = math,
  }
end

local function assess(obj)
  local env = sandbox(obj)
  setfenv(chunk, env)
  local hs = chunk()
  return hs, env
end

-- Fixture helpers -----------------------------------------------------------------------------

local function pipeline(generation, status)
  return {
    apiVersion = "clickheatmap.io/v1alpha1",
    kind = "ClickHeatmapPipeline",
    metadata = { name = "shop", namespace = "analytics", generation = generation },
    spec = {
      region = "ap-northeast-2",
      stream = { name = "shop-clicks" },
      buckets = { raw = "r-123", curated = "c-123", queryResults = "q-123" },
      rawArchive = { roleArn = "arn:aws:iam::123456789012:role/shop-heatmap-firehose" },
    },
    status = status,
  }
end

local function condition(type_, status, reason, message, observedGeneration)
  return {
    type = type_,
    status = status,
    reason = reason,
    message = message,
    observedGeneration = observedGeneration,
    lastTransitionTime = "2026-01-01T00:00:00Z",
  }
end

local function ready(status, reason, message, observedGeneration)
  return condition("Ready", status, reason, message, observedGeneration)
end

-- Cases -------------------------------------------------------------------------------------

local cases = {
  {
    name = "healthy: Ready True at the current generation",
    obj = pipeline(3, { observedGeneration = 3, conditions = {
      ready("True", "Ready", "Every part of the pipeline exists and matches the spec", 3),
    } }),
    status = "Healthy",
    message = "Every part of the pipeline exists and matches the spec",
  },
  {
    name = "healthy: Ready picked among per-part conditions",
    obj = pipeline(2, { observedGeneration = 2, conditions = {
      condition("StreamReady", "True", "Ready", "stream shop-clicks is ACTIVE", 2),
      ready("True", "Ready", "pipeline ready", 2),
      condition("AggregatorReady", "True", "Ready", "2/2 replicas ready", 2),
    } }),
    status = "Healthy",
    message = "pipeline ready",
  },
  {
    name = "healthy: generations arrive as floats (gopher-lua numbers)",
    obj = pipeline(5.0, { observedGeneration = 5.0, conditions = { ready("True", "Ready", "ok") } }),
    status = "Healthy",
    message = "ok",
  },
  {
    name = "healthy: empty message falls back to the reason",
    obj = pipeline(1, { observedGeneration = 1, conditions = { ready("True", "Ready", "") } }),
    status = "Healthy",
    message = "Ready",
  },
  {
    name = "provisioning: no status yet",
    obj = pipeline(1, nil),
    status = "Progressing",
    message = "Waiting for the operator to report the pipeline's status",
  },
  {
    name = "provisioning: status without conditions",
    obj = pipeline(1, { observedGeneration = 1 }),
    status = "Progressing",
    message = "Waiting for the Ready condition",
  },
  {
    name = "provisioning: conditions but no Ready condition",
    obj = pipeline(1, { observedGeneration = 1, conditions = {
      condition("StreamReady", "True", "Ready", "stream is ACTIVE", 1),
    } }),
    status = "Progressing",
    message = "Waiting for the Ready condition",
  },
  {
    name = "provisioning: Ready False, reason Provisioning",
    obj = pipeline(1, { observedGeneration = 1, conditions = {
      ready("False", "Provisioning", "Creating Kinesis stream shop-clicks", 1),
    } }),
    status = "Progressing",
    message = "Creating Kinesis stream shop-clicks",
  },
  {
    name = "generation behind: observedGeneration older than metadata.generation",
    obj = pipeline(4, { observedGeneration = 3, conditions = { ready("True", "Ready", "ok", 3) } }),
    status = "Progressing",
    message = "Waiting for the operator to observe generation 4 (status describes generation 3)",
  },
  {
    name = "generation behind: a terminal error of the old spec is not Degraded",
    obj = pipeline(7, { observedGeneration = 6, conditions = {
      ready("False", "InvalidSpec", "window must divide a day evenly", 6),
    } }),
    status = "Progressing",
    message = "Waiting for the operator to observe generation 7 (status describes generation 6)",
  },
  {
    name = "generation behind: no observedGeneration in the status",
    obj = pipeline(2, { conditions = { ready("True", "Ready", "ok") } }),
    status = "Progressing",
    message = "Waiting for the operator to observe generation 2",
  },
  {
    name = "generation behind: the Ready condition itself is stamped with an older generation",
    obj = pipeline(9, { observedGeneration = 9, conditions = { ready("True", "Ready", "ok", 8) } }),
    status = "Progressing",
    message = "Waiting for the Ready condition of generation 9",
  },
  {
    name = "retrying: Ready False, reason Retrying",
    obj = pipeline(1, { observedGeneration = 1, conditions = {
      ready("False", "Retrying", "Firehose: ServiceUnavailableException; retrying in 30s", 1),
    } }),
    status = "Progressing",
    message = "Firehose: ServiceUnavailableException; retrying in 30s",
  },
  {
    name = "retrying: Ready False, reason Throttled",
    obj = pipeline(1, { observedGeneration = 1, conditions = {
      ready("False", "Throttled", "Kinesis LimitExceededException; backing off", 1),
    } }),
    status = "Progressing",
    message = "Kinesis LimitExceededException; backing off",
  },
  {
    name = "retrying: Ready Unknown",
    obj = pipeline(1, { observedGeneration = 1, conditions = { ready("Unknown", "Reconciling", "", 1) } }),
    status = "Progressing",
    message = "Reconciling",
  },
  {
    name = "retrying: an unknown reason is not terminal",
    obj = pipeline(1, { observedGeneration = 1, conditions = {
      ready("False", "SomethingNew", "a reason this check does not know", 1),
    } }),
    status = "Progressing",
    message = "a reason this check does not know",
  },
}

local terminal = {
  InvalidSpec = "aggregation.window 7m does not divide a day evenly",
  Conflict = "stream shop-clicks is tagged by pipeline analytics/other; not touching it",
  AccessDenied = "kinesis:CreateStream denied for arn:aws:sts::123456789012:assumed-role/clickheatmap-operator",
  NotFound = "IAM role arn:aws:iam::123456789012:role/shop-heatmap-firehose does not exist",
}
terminal.PodFailing = "AggregatorReady: StatefulSet shop-aggregator: pod shop-aggregator-0: container aggregator CrashLoopBackOff (last exit: Error, code 1; 4 restarts)"
terminal.ProgressDeadlineExceeded = "CollectorReady: Deployment shop-collector: the rollout made no progress within its deadline (0 of 2 pods ready)"
table.insert(cases, {
  name = "suspended: the aggregator is paused on purpose",
  obj = pipeline(4, { observedGeneration = 4, conditions = {
    ready("True", "Ready", "Every part of the pipeline exists and matches the spec", 4),
    condition("AggregatorReady", "True", "Paused", "StatefulSet shop-aggregator: paused", 4),
  } }),
  status = "Suspended",
  message = "StatefulSet shop-aggregator: paused",
})
table.insert(cases, {
  name = "rolling out: new pods are starting",
  obj = pipeline(4, { observedGeneration = 4, conditions = {
    ready("False", "RollingOut", "AggregatorReady: StatefulSet shop-aggregator: rolling out", 4),
  } }),
  status = "Progressing",
  message = "AggregatorReady: StatefulSet shop-aggregator: rolling out",
})
-- The data plane: only a stall degrades a Ready pipeline; waiting for the first report or the
-- first window is progress; a quiet pipeline stays healthy.
local function dataPlane(flowing, fresh)
  return pipeline(5, { observedGeneration = 5, conditions = {
    ready("True", "Ready", "Every part of the pipeline exists and matches the spec", 5),
    condition("AggregatorReady", "True", "Ready", "1/1 replicas ready", 5),
    flowing,
    fresh,
  } })
end
table.insert(cases, {
  name = "data plane: stalled is Degraded",
  obj = dataPlane(
    condition("DataFlowing", "False", "Stalled", "shard shardId-000000000000 is 5m behind the stream but has committed nothing for 12m", 5),
    condition("Fresh", "False", "Stale", "the table lags by 14m", 5)),
  status = "Degraded",
  message = "shard shardId-000000000000 is 5m behind the stream but has committed nothing for 12m",
})
table.insert(cases, {
  name = "data plane: awaiting the first report is Progressing",
  obj = dataPlane(
    condition("DataFlowing", "Unknown", "AwaitingReport", "waiting for the aggregator's first progress report", 5),
    condition("Fresh", "Unknown", "NoReport", "no report", 5)),
  status = "Progressing",
  message = "waiting for the aggregator's first progress report",
})
table.insert(cases, {
  name = "data plane: the first window not in the table yet is Progressing",
  obj = dataPlane(
    condition("DataFlowing", "True", "ClicksAccepted", "120 clicks/min accepted", 5),
    condition("Fresh", "Unknown", "FirstWindowOpen", "clicks are being counted; the first window has not reached the table yet", 5)),
  status = "Progressing",
  message = "clicks are being counted; the first window has not reached the table yet",
})
for _, quiet in ipairs({ "NoTraffic", "AllRejected" }) do
  table.insert(cases, {
    name = "data plane: " .. quiet .. " stays Healthy",
    obj = dataPlane(
      condition("DataFlowing", "False", quiet, "nothing valid arrives", 5),
      condition("Fresh", "True", "Current", "the newest window ended 20m ago", 5)),
    status = "Healthy",
    message = "Every part of the pipeline exists and matches the spec",
  })
end
table.insert(cases, {
  name = "data plane: flowing and fresh is Healthy",
  obj = dataPlane(
    condition("DataFlowing", "True", "ClicksAccepted", "120 clicks/min accepted", 5),
    condition("Fresh", "True", "Current", "the newest window ended 40s ago", 5)),
  status = "Healthy",
  message = "Every part of the pipeline exists and matches the spec",
})
terminal.ReplicaFailure = "ViewerReady: Deployment shop-viewer: pods \"shop-viewer-1\" is forbidden: no PriorityClass with name analytics was found"
for _, reason in ipairs({ "InvalidSpec", "Conflict", "AccessDenied", "NotFound", "PodFailing", "ProgressDeadlineExceeded", "ReplicaFailure" }) do
  table.insert(cases, {
    name = "terminal: Ready False, reason " .. reason,
    obj = pipeline(2, { observedGeneration = 2, conditions = {
      condition("StreamReady", "False", reason, terminal[reason], 2),
      ready("False", reason, terminal[reason], 2),
    } }),
    status = "Degraded",
    message = terminal[reason],
  })
end

-- Runner ------------------------------------------------------------------------------------

local passed, failed = 0, 0

local function check(name, ok, detail)
  if ok then
    passed = passed + 1
    print("ok   " .. name)
  else
    failed = failed + 1
    print("FAIL " .. name .. ": " .. detail)
  end
end

for _, case in ipairs(cases) do
  local ok, hs, env = pcall(assess, case.obj)
  if not ok then
    check(case.name, false, "health.lua raised: " .. tostring(hs))
  elseif type(hs) ~= "table" then
    check(case.name, false, "health.lua returned " .. type(hs) .. ", want a table")
  else
    local problems = {}
    if hs.status ~= case.status then
      table.insert(problems, "status " .. tostring(hs.status) .. ", want " .. case.status)
    end
    if hs.message ~= case.message then
      table.insert(problems, "message " .. string.format("%q", tostring(hs.message))
        .. ", want " .. string.format("%q", case.message))
    end
    -- The script must not leave globals behind (Argo CD reuses its Lua state per script).
    for key in pairs(env) do
      if sandbox(nil)[key] == nil and key ~= "obj" then
        table.insert(problems, "left a global behind: " .. tostring(key))
      end
    end
    check(case.name, #problems == 0, table.concat(problems, "; "))
  end
end

-- The argocd-cm example must carry health.lua verbatim under the right key.
do
  local key = "resource.customizations.health.clickheatmap.io_ClickHeatmapPipeline: |"
  local ok, text = pcall(readFile, argocdCmPath)
  if not ok then
    check("argocd-cm snippet embeds health.lua", false, "cannot read " .. argocdCmPath)
  else
    local block, indent, inBlock = {}, nil, false
    for line in (text .. "\n"):gmatch("([^\n]*)\n") do
      if inBlock then
        if line == "" then
          table.insert(block, "")
        else
          local lead = line:match("^( *)")
          if indent == nil then indent = #lead end
          if #lead < indent then break end
          table.insert(block, line:sub(indent + 1))
        end
      elseif line:match("^%s*(.-)%s*$") == key then
        inBlock = true
      end
    end
    while #block > 0 and block[#block] == "" do table.remove(block) end
    local embedded = table.concat(block, "\n") .. "\n"
    local source = readFile(healthPath)
    check("argocd-cm snippet embeds health.lua", inBlock and embedded == source,
      inBlock and "the block under the key differs from deploy/argocd/health.lua"
        or ("key not found: " .. key))
  end
end

print(string.format("%d passed, %d failed", passed, failed))
if failed > 0 then
  os.exit(1)
end
