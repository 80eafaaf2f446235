-- Tag retention for the private registry, run by regbot (regclient), see retention.py.
--
-- Per repository: a tag is kept when it matches a protected pattern, is among the
-- RETENTION_KEEP_LAST most recent, or is younger than RETENTION_KEEP_DAYS days; every other
-- tag goes. "Recent" and "younger" are the image's creation time (its config's `created`), the
-- only date the registry API gives. A tag whose date cannot be read ranks after every dated
-- one for RETENTION_KEEP_LAST, and RETENTION_KEEP_DAYS keeps it.
--
-- A tag goes with a DELETE of its manifest digest when no kept tag shares that digest (the
-- registry then drops every tag of it, and garbage collection frees its blobs); when a kept tag
-- shares it, only the tag goes (regclient's tag delete: it points the tag at a throw-away
-- manifest and deletes that one, so the shared manifest stays).
--
-- The settings come from the environment the CronJob sets:
--   RETENTION_REGISTRY   host:port of the registry (its certificate's name)
--   RETENTION_KEEP_LAST  a count, or empty
--   RETENTION_KEEP_DAYS  a number of days, or empty
--   RETENTION_PROTECT    Lua patterns, one per line, anchored (made from the protect globs)
-- With regbot's --dry-run every delete is logged and skipped.

local registry = assert(os.getenv("RETENTION_REGISTRY"), "RETENTION_REGISTRY is not set")
local keepLast = tonumber(os.getenv("RETENTION_KEEP_LAST") or "")
local keepDays = tonumber(os.getenv("RETENTION_KEEP_DAYS") or "")
local protectPatterns = {}
for pattern in string.gmatch(os.getenv("RETENTION_PROTECT") or "", "[^\n]+") do
  table.insert(protectPatterns, pattern)
end
local now = os.time()

local function isProtected(tagName)
  for _, pattern in ipairs(protectPatterns) do
    if string.match(tagName, pattern) then
      return true
    end
  end
  return false
end

-- Days since 1970-01-01 of a civil date (Howard Hinnant's days_from_civil): the epoch seconds
-- of a UTC time without os.time's local time zone.
local function daysFromCivil(year, month, day)
  if month <= 2 then
    year = year - 1
  end
  local era = math.floor(year / 400)
  local yearOfEra = year - era * 400
  local monthIndex = (month + 9) % 12
  local dayOfYear = math.floor((153 * monthIndex + 2) / 5) + day - 1
  local dayOfEra = yearOfEra * 365 + math.floor(yearOfEra / 4) - math.floor(yearOfEra / 100) + dayOfYear
  return era * 146097 + dayOfEra - 719468
end

-- An image config's `created` as regbot hands it over (Go's time.Time String(), e.g.
-- "2026-11-01 00:00:00.5 +0100 +0100"; RFC 3339 also accepted) to epoch seconds; nil when it
-- is neither.
local function epochSeconds(text)
  if type(text) ~= "string" then
    return nil
  end
  local year, month, day, hour, minute, second, rest =
    string.match(text, "^(%d%d%d%d)-(%d%d)-(%d%d)[Tt ](%d%d):(%d%d):(%d%d)(.*)$")
  if year == nil then
    return nil
  end
  rest = string.gsub(rest, "^%.%d+", "")
  local offset = 0
  if not string.match(rest, "^[Zz]$") then
    local sign, offsetHours, offsetMinutes = string.match(rest, "^ ?([+-])(%d%d):?(%d%d)")
    if sign == nil then
      return nil
    end
    offset = tonumber(offsetHours) * 3600 + tonumber(offsetMinutes) * 60
    if sign == "-" then
      offset = -offset
    end
  end
  local days = daysFromCivil(tonumber(year), tonumber(month), tonumber(day))
  return days * 86400 + tonumber(hour) * 3600 + tonumber(minute) * 60 + tonumber(second) - offset
end

local function createdAt(ref)
  local ok, config = pcall(image.config, ref)
  if not ok then
    return nil
  end
  return epochSeconds(config.created)
end

-- Every repository: the catalog comes in pages.
local function repositories()
  local all, last = {}, nil
  while true do
    local page
    if last == nil then
      page = repo.ls(registry)
    else
      page = repo.ls(registry, { last = last })
    end
    if #page == 0 or page[#page] == last then
      return all
    end
    for _, name in ipairs(page) do
      table.insert(all, name)
    end
    last = page[#page]
  end
end

local function planRepository(repoName)
  local tags = {}
  for _, tagName in ipairs(tag.ls(reference.new(registry .. "/" .. repoName))) do
    local ref = reference.new(registry .. "/" .. repoName .. ":" .. tagName)
    local head = manifest.head(ref)
    table.insert(tags, {
      name = tagName,
      digest = head:descriptor().digest,
      created = createdAt(ref),
    })
  end
  -- Newest first; an undated tag after every dated one, ties by name.
  table.sort(tags, function(a, b)
    if a.created ~= b.created then
      if a.created == nil then
        return false
      end
      if b.created == nil then
        return true
      end
      return a.created > b.created
    end
    return a.name < b.name
  end)
  local keep, drop = {}, {}
  for rank, entry in ipairs(tags) do
    local reason = nil
    if isProtected(entry.name) then
      reason = "protected"
    elseif keepLast ~= nil and rank <= keepLast then
      reason = "among the " .. keepLast .. " most recent"
    elseif keepDays ~= nil and entry.created == nil then
      reason = "no creation date"
    elseif keepDays ~= nil and now - entry.created < keepDays * 86400 then
      reason = "younger than " .. keepDays .. " days"
    end
    entry.reason = reason
    if reason ~= nil then
      table.insert(keep, entry)
    else
      table.insert(drop, entry)
    end
  end
  return keep, drop
end

local total = 0
for _, repoName in ipairs(repositories()) do
  local keep, drop = planRepository(repoName)
  local keptDigests = {}
  for _, entry in ipairs(keep) do
    keptDigests[entry.digest] = true
    log("keep " .. repoName .. ":" .. entry.name .. " (" .. entry.reason .. ")")
  end
  local deletedDigests = {}
  for _, entry in ipairs(drop) do
    log("delete " .. repoName .. ":" .. entry.name .. " " .. entry.digest)
    total = total + 1
    if keptDigests[entry.digest] then
      tag.delete(reference.new(registry .. "/" .. repoName .. ":" .. entry.name))
    elseif not deletedDigests[entry.digest] then
      deletedDigests[entry.digest] = true
      manifest.head(reference.new(registry .. "/" .. repoName .. "@" .. entry.digest)):delete()
    end
  end
end
log("retention: " .. total .. " tag(s) to delete")
