-- Shared by every ana-redis script, first: locals only, cheap to run (the functions are in
-- helpers.lua). KEYS[1] is the record's key; ARGV[1] is the retention after the expiration and
-- ARGV[2] the retention of a record without expiration, both in microseconds (read where they
-- are needed). Times are integer microseconds since the Unix epoch, on the server's clock.
local key = KEYS[1]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

-- A record is one string: a fixed-width header, the failure kind's name, then the data (the
-- result, or the failure's message). The offsets (1-based) are layout.rs's, checked by its
-- tests.
local AT_STATUS = 2
local AT_HAS_DATA = 3
local AT_FINGERPRINT = 4
local AT_ATTEMPT = 36
local AT_CLAIM = 56
local AT_REFERENCE_TIME = 76
local AT_STARTED_AT = 93
local AT_TIMEOUT = 110
local AT_EXPIRATION = 127
local AT_FINISHED_AT = 144
local AT_ERROR_COUNT = 161
local AT_KIND_LENGTH = 171
local HEADER = 172
local MARKER = 'A'
local NO_TIME = '_________________'
local READY, RUNNING, FINISHED, FAILED = '0', '1', '2', '3'

