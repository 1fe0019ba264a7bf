-- Argo CD health of a kubetune.io/PreferenceAlignment (docs/gitops.md). FineTuneJob and PreferenceAlignment
-- share one status shape and one script: Argo CD's layout wants a copy per kind.
--   Healthy      Succeeded with every gate passed (condition Ready=True)
--   Degraded     Failed or GateFailed, with the reason and message
--   Suspended    spec.suspend, once the operator acted on it
--   Progressing  anything else, and a status that describes an older generation than the spec's
-- Only Lua's base library: scripts from argocd-cm run without string/math unless useOpenLibs.
local function text(value)
  if value == nil then
    return ""
  end
  return tostring(value)
end

local hs = {}
local status = obj.status or {}
local generation = obj.metadata.generation
if status.observedGeneration == nil or status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "waiting for the kubetune operator to observe generation " .. text(generation)
  return hs
end

local ready = false
for _, condition in ipairs(status.conditions or {}) do
  if condition.type == "Ready" and condition.status == "True" then
    ready = true
  end
end

local phase = status.phase or "Pending"
if phase == "Succeeded" and ready then
  hs.status = "Healthy"
  hs.message = text(status.message)
elseif phase == "Failed" or phase == "GateFailed" then
  hs.status = "Degraded"
  hs.message = phase .. " (" .. text(status.reason) .. "): " .. text(status.message)
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = text(status.message)
else
  hs.status = "Progressing"
  hs.message = phase .. ": " .. text(status.message)
end
return hs
