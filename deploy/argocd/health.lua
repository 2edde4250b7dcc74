-- Argo CD health check for clickheatmap.io/ClickHeatmapPipeline.
--
-- Register it in argocd-cm under the key
--   resource.customizations.health.clickheatmap.io_ClickHeatmapPipeline
-- (examples/argocd/argocd-cm-health.yaml holds this file verbatim; tests/argocd/run.sh checks
-- that the two stay the same). Argo CD runs it in gopher-lua (Lua 5.1) with the live object in
-- the global `obj`; it returns { status = ..., message = ... }.
--
--   Healthy      the Ready condition is True and status.observedGeneration equals
--                metadata.generation: every part of the pipeline matches the current spec.
--   Suspended    Ready is True and the aggregator is paused on purpose (aggregation.replicas 0:
--                AggregatorReady has the reason Paused).
--   Degraded     Ready is False with a terminal reason: the operator stopped retrying and a
--                person must act (fix the spec, the IAM policy, the name clash, a workload
--                whose container crash-loops or whose image cannot be pulled).
--                Also when Ready is True but the data plane is stalled: records wait in the
--                stream (or the aggregator stopped reporting) and nothing reaches the table
--                (DataFlowing False with the reason Stalled).
--   Progressing  anything else: no status yet, the operator has not seen the latest spec, or
--                Ready is False/Unknown with a reason it retries by itself (Provisioning,
--                Retrying, Throttled, ...); and a Ready pipeline whose aggregator has not
--                reported yet (DataFlowing Unknown, AwaitingReport) or whose first window has
--                not reached the table (Fresh Unknown, FirstWindowOpen).
--   A quiet pipeline (DataFlowing False: NoTraffic, AllRejected) stays Healthy: that is about
--   what is sent to it, which alerts (the chart's PrometheusRule) and the condition report.

-- Ready reasons the operator uses for errors that retrying cannot fix.
local terminalReasons = {
  InvalidSpec = true,
  Conflict = true,
  AccessDenied = true,
  NotFound = true,
  PodFailing = true,
  ProgressDeadlineExceeded = true,
  ReplicaFailure = true,
}

local function findCondition(status, type_)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, condition in ipairs(status.conditions) do
    if condition.type == type_ then
      return condition
    end
  end
  return nil
end

local function readyCondition(status)
  return findCondition(status, "Ready")
end

-- The condition's message, or its reason when the message is empty.
local function describe(condition)
  if condition.message ~= nil and condition.message ~= "" then
    return condition.message
  end
  if condition.reason ~= nil and condition.reason ~= "" then
    return condition.reason
  end
  return "Ready is " .. tostring(condition.status)
end

local function assess(obj)
  local hs = {}
  local generation = nil
  if obj.metadata ~= nil then
    generation = obj.metadata.generation
  end
  local status = obj.status

  if status == nil then
    hs.status = "Progressing"
    hs.message = "Waiting for the operator to report the pipeline's status"
    return hs
  end

  local observed = status.observedGeneration
  if observed == nil or (generation ~= nil and observed ~= generation) then
    hs.status = "Progressing"
    if generation ~= nil then
      hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
      if observed ~= nil then
        hs.message = hs.message .. " (status describes generation " .. tostring(observed) .. ")"
      end
    else
      hs.message = "Waiting for the operator to observe the latest spec"
    end
    return hs
  end

  local ready = readyCondition(status)
  if ready == nil then
    hs.status = "Progressing"
    hs.message = "Waiting for the Ready condition"
    return hs
  end

  -- A condition stamped with an older generation describes an older spec.
  if ready.observedGeneration ~= nil and generation ~= nil and ready.observedGeneration ~= generation then
    hs.status = "Progressing"
    hs.message = "Waiting for the Ready condition of generation " .. tostring(generation)
    return hs
  end

  local aggregator = findCondition(status, "AggregatorReady")
  if ready.status == "True" and aggregator ~= nil and aggregator.reason == "Paused" then
    hs.status = "Suspended"
    hs.message = describe(aggregator)
    return hs
  end
  if ready.status == "True" then
    local flowing = findCondition(status, "DataFlowing")
    local fresh = findCondition(status, "Fresh")
    if flowing ~= nil and flowing.status == "False" and flowing.reason == "Stalled" then
      hs.status = "Degraded"
      hs.message = describe(flowing)
      return hs
    end
    if flowing ~= nil and flowing.status == "Unknown" and flowing.reason == "AwaitingReport" then
      hs.status = "Progressing"
      hs.message = describe(flowing)
      return hs
    end
    if fresh ~= nil and fresh.status == "Unknown" and fresh.reason == "FirstWindowOpen" then
      hs.status = "Progressing"
      hs.message = describe(fresh)
      return hs
    end
    hs.status = "Healthy"
  elseif ready.status == "False" and ready.reason ~= nil and terminalReasons[ready.reason] then
    hs.status = "Degraded"
  else
    hs.status = "Progressing"
  end
  hs.message = describe(ready)
  return hs
end

return assess(obj)
