-- Tag retention for the private registry, run by regbot (regclient), see retention.py.
--
-- Per repository: a tag is kept when it matches a protected pattern, is among the
-- RETENTION_KEEP_LAST most recent, or is younger than RETENTION_KEEP_DAYS days; every other
-- tag goes. "Recent" and "younger" are the image's creation time (its config's `created`), the
-- only date the registry API gives. An image index (a multi-platform image, one buildx pushed
-- with its attestations) is as old as the newest image it lists for a platform: the `created`
-- of each listed image's own config, read by digest, so the date does not depend on the
-- platform of the node the job runs on; attestation manifests (platform unknown/unknown) and
-- lists nested in a list give no date. A tag whose date cannot be read ranks after every
-- dated one for RETENTION_KEEP_LAST, and RETENTION_KEEP_DAYS keeps it.
--
-- A signature or attestation stored under its subject's digest (OCI's referrers tag schema
-- `sha256-<hex>`, cosign's `sha256-<hex>.sig`, `.att`, `.sbom`) is no image of its own: it is
-- kept exactly while its subject is kept (a kept tag's image, or an image a kept index lists).
--
-- Only tags are deleted (distribution 3 untags: DELETE /v2/<name>/manifests/<tag>; regclient's
-- tag delete sends that first). What no kept tag reaches any more, the registry's garbage
-- collector removes with --delete-untagged, and it keeps every manifest a kept index lists
-- (garbage_collection.py), so a platform image that is also tagged on its own (`app:1.0-arm64`
-- beside the index `app:1.0`) stays as long as the index does.
--
-- A tag whose manifest cannot be read is kept, and the log says so: nothing is deleted that
-- the job could not look at.
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

-- The subject digest a referrer tag names ("sha256-<64 hex>" with an optional ".sig", ".att",
-- ".sbom"...), or nil for any other tag.
local function referrerSubject(tagName)
  local hex, suffix = string.match(tagName, "^sha256%-(%x+)(.*)$")
  if hex == nil or #hex ~= 64 or not (suffix == "" or string.match(suffix, "^%.%w+$")) then
    return nil
  end
  return "sha256:" .. string.lower(hex)
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

local function byDigest(repoName, digest)
  return reference.new(registry .. "/" .. repoName .. "@" .. digest)
end

-- The creation time of the image manifest `digest` (its config's `created`), or nil.
local function createdAt(repoName, digest)
  local ok, config = pcall(image.config, byDigest(repoName, digest))
  if not ok then
    log("no date for " .. repoName .. "@" .. digest .. ": " .. tostring(config))
    return nil
  end
  return epochSeconds(config.created)
end

local function isPlatformImage(listed)
  local platform = listed.platform
  local annotations = listed.annotations or {}
  if annotations["vnd.docker.reference.type"] ~= nil then
    return false
  end
  return platform == nil or not (platform.os == "unknown" and platform.architecture == "unknown")
end

-- What a tag is: its digest, the digests an index lists, its creation time; or nil and why
-- when its manifest cannot be read.
local function readTag(repoName, tagName)
  local ok, m = pcall(manifest.getList, reference.new(registry .. "/" .. repoName .. ":" .. tagName))
  if not ok then
    return nil, tostring(m)
  end
  local entry = { name = tagName, digest = m:descriptor().digest, listed = {} }
  if m.manifests == nil then
    entry.created = createdAt(repoName, entry.digest)
    return entry
  end
  for _, listed in ipairs(m.manifests) do
    table.insert(entry.listed, listed.digest)
    if isPlatformImage(listed) then
      local created = createdAt(repoName, listed.digest)
      if created ~= nil and (entry.created == nil or created > entry.created) then
        entry.created = created
      end
    end
  end
  return entry
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

-- Newest first; an undated tag after every dated one, ties by name.
local function newestFirst(a, b)
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
end

local function planRepository(repoName)
  local images, referrers, keep, drop = {}, {}, {}, {}
  for _, tagName in ipairs(tag.ls(reference.new(registry .. "/" .. repoName))) do
    local subject = referrerSubject(tagName)
    local entry, problem = readTag(repoName, tagName)
    if entry == nil then
      table.insert(keep, { name = tagName, reason = "its manifest cannot be read: " .. problem })
    elseif subject ~= nil then
      entry.subject = subject
      table.insert(referrers, entry)
    else
      table.insert(images, entry)
    end
  end
  table.sort(images, newestFirst)
  local keptDigests = {}
  for rank, entry in ipairs(images) do
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
      keptDigests[entry.digest] = true
      for _, digest in ipairs(entry.listed) do
        keptDigests[digest] = true
      end
    else
      table.insert(drop, entry)
    end
  end
  table.sort(referrers, function(a, b) return a.name < b.name end)
  for _, entry in ipairs(referrers) do
    if keptDigests[entry.subject] then
      entry.reason = "its subject " .. entry.subject .. " is kept"
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
  for _, entry in ipairs(keep) do
    log("keep " .. repoName .. ":" .. entry.name .. " (" .. entry.reason .. ")")
  end
  for _, entry in ipairs(drop) do
    log("delete " .. repoName .. ":" .. entry.name .. " " .. entry.digest)
    total = total + 1
    tag.delete(reference.new(registry .. "/" .. repoName .. ":" .. entry.name))
  end
end
log("retention: " .. total .. " tag(s) to delete")
