"""Every timing constant of the hive, in one place. All values are seconds."""

# Replay protection: a message whose ts is further than this from local time is dropped
# (the DNS TSIG and Kerberos default clock skew).
MAX_CLOCK_SKEW = 300.0
# How many recently seen signatures the replay cache remembers (oldest forgotten first).
REPLAY_CACHE_SIZE = 8192

# Discovery: HELLO is broadcast at these offsets from the start of discovery.
HELLO_SCHEDULE = (0.0, 0.25, 0.75)
# Discovery ends once every established member has answered (a WELCOME says how many there
# are), but not before this: a moment for the first WELCOMEs, and those of nodes joining ahead
# of us, to arrive.  Missing a joiner costs nothing: only one node asks at a time (see agent).
DISCOVERY_MIN = 0.05
# ... and always ends here: no established member answered, so we may found the hive.
DISCOVERY_MAX = 1.5

# Asking: IDENTIFY is broadcast at these offsets; we stop when every expected advisor answered.
IDENTIFY_SCHEDULE = (0.0, 0.4, 1.2)
# Give up waiting for missing advisors after this and decide with the advice we have.
ADVICE_TIMEOUT = 2.5
# When established members exist but none advised, ask again after this (doubling, capped).
REASK_BACKOFF_FIRST = 2.0
REASK_BACKOFF_MAX = 60.0

# A joining node that waits for others ahead of it re-announces itself this often ...
JOINING_KEEPALIVE = 1.0
# ... and a joining node not heard from for this long is no longer waited for.
JOINING_PEER_TIMEOUT = 3.5

# A member is dead after missing this many of its own heartbeat intervals.
DEAD_AFTER_INTERVALS = 3

# Provisioning: apt-get update attempts, the pause between them, and the retry of a failed install.
APT_UPDATE_ATTEMPTS = 3
APT_UPDATE_PAUSE = 5.0
PROVISION_RETRY = 300.0
# Each apt-get/dpkg command may run this long; the whole install unit (build-hive-provision)
# this long (systemd's RuntimeMaxSec=).
APT_COMMAND_TIMEOUT = 3600.0
PROVISION_UNIT_MAX = 7200.0
# While an install runs, the agent looks at its worker this often; a restarted agent looks this
# often whether the install unit of its previous life still runs; a systemctl query may take this.
PROVISION_POLL = 1.0
PROVISION_UNIT_POLL = 2.0
SYSTEMCTL_TIMEOUT = 30.0

# Rejected datagrams are logged (debug) at most once per this period, with a count.
REJECT_LOG_PERIOD = 60.0

# Re-read peers.json written by the local agent at most this often (advisor).
PEERS_FILE_POLL = 1.0
