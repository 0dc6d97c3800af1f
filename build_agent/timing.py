"""Every timing constant of the hive, in one place. All values are seconds."""

# Replay protection: a message whose ts is further than this from local time is dropped
# (the DNS TSIG and Kerberos default clock skew).
MAX_CLOCK_SKEW = 300.0
# Replay protection remembers the newest ts per (sender, kind): at most this many entries
# (a 200-node hive with its kinds needs about 1,400; least recently used forgotten first).
REPLAY_GUARD_SENDERS = 16384
# ... and the digests of this many datagrams accepted last, so an exact copy (a replay) is
# dropped before it is parsed (a 200-node hive sends about 20 STATUS a second: minutes).
REPLAY_GUARD_RECENT = 4096
# Parsed time stamps remembered (protocol.parse_ts): a member's STATUS repeats three of them
# at every heartbeat (joined_at, role_since, started); 200 members and a heartbeat interval
# of new message stamps fit.  About 100 bytes each.
TS_CACHE = 2048

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
# A repeated HELLO or IDENTIFY waits while datagrams are still queued (the answers it would
# ask for may be among them: 100 followers asked 16 advisors again for advice they had not read
# yet), at most this long past its time (a flood keeps the queue full).
BEHIND_WAIT_MAX = 0.4
# When established members exist but none advised, ask again after this (doubling, capped).
REASK_BACKOFF_FIRST = 2.0
REASK_BACKOFF_MAX = 60.0

# A joining node that waits for others ahead of it re-announces itself this often ...
JOINING_KEEPALIVE = 1.0
# ... and a joining node not heard from for this long is no longer waited for.
JOINING_PEER_TIMEOUT = 3.5
# Both stretch when many nodes join at once: every node hears every joiner's keep-alive, so a
# joiner that knows more than this many others joining keeps alive in proportion (100 joiners:
# every 5 s), at most JOINING_PACE_MAX times slower; it states its pace (``keepalive`` in its
# STATUS) and is waited for JOINING_PEER_TIMEOUT times that.  (At 1 s, 100 joiners waiting in a
# queue cost the agents of a 2-core lab 1.9 CPU-seconds a second.)
JOINING_KEEPALIVE_PEERS = 20
JOINING_PACE_MAX = 5.0

# A member is dead after missing this many of its own heartbeat intervals.
DEAD_AFTER_INTERVALS = 3
# ... or this many, for a member that takes part in probing (it states a probe interval): probes
# notice its death in seconds, so the heartbeat rule is only the backstop, and a long one: at 5 %
# loss three lost STATUS in a row (0.05^3 = 1.25e-4 per member, observer and interval) would
# drop a live member about 3 times per 10 minutes in a hive of 20 (20*19 pairs * 60 intervals);
# six in a row (1.6e-8) about once in 2,800 such runs, at 200 hosts about once in 27.
DEAD_AFTER_INTERVALS_PROBED = 6
# A member that takes part in probing broadcasts its routine STATUS every this many heartbeat
# intervals (and states that as its ``interval``): probes notice its death, so its STATUS only
# carries its state (load, capacity, health, queue), and goes out at the next heartbeat whenever
# that changes beyond its load.  Every node hears every member's STATUS: at 50 members 5 a
# second at 10 s, 1.7 at 30 s, which is most of an idle node's CPU and wire cost.
STATUS_INTERVALS_PROBED = 3
# ... and beyond STATUS_STRETCH_MEMBERS members, that many more in proportion, at most
# STATUS_INTERVALS_MAX (200 members: 6 intervals, 60 s; from 300: 90 s), so what a node hears
# at rest stops growing with the hive: 200 members every 30 s were 6.7 STATUS a second at every
# node, most of its CPU at rest.
STATUS_STRETCH_MEMBERS = 100
STATUS_INTERVALS_MAX = 9
# A sender that states no interval (a node of the reference scripts: HEARTBEAT, no
# ``interval``) heartbeats about every 32 s: it is given this interval, not ours.
REFERENCE_INTERVAL = 32.0

# Failure detection by probing (build_agent/probe.py, SWIM-like; STATUS broadcasts stay slow).
# The members that state a probe interval (``probe`` in HELLO/WELCOME/STATUS) form a ring ordered
# by node id; every member probes its successor once per probe interval (hive.toml
# probe_interval, seconds; 0: this node takes no part and is judged by heartbeats alone).
# 1.5 s, not Serf's 1 s: on 2 cores a Python node pays about 0.3 ms of CPU per datagram it wakes
# for, and a probe round is three wake-ups (our PING out, its PONG back, our predecessor's PING);
# at 1 s an idle node at 50 members used 0.13 s of CPU a minute against a Serf agent's 0.12, at
# 1.5 s 0.10, while a kill -9 is still noticed in about 5-6 s, before Serf's defaults (8-9 s).
PROBE_INTERVAL_DEFAULT = 1.5
# One probe round lasts one probe interval: a PING to the target; with no PONG after this share
# of the interval, PINGREQ to PROBE_HELPERS other members, each of which PINGs the target and
# answers PONG (the target answered it) or, after PROBE_HELPER_SHARE of the interval, a NACK
# (PONG ok=false: it could not reach the target either).  A round fails when no sign of life of
# the target came in the whole round (any message of it counts, late PONGs included) and we heard
# some other node during it (a helper's NACK, our own predecessor's PING): a prober that hears
# nobody may be cut off itself, and accuses nobody.
PROBE_DIRECT_SHARE = 0.35
PROBE_HELPER_SHARE = 0.4
PROBE_HELPERS = 3
# The target is suspected after one failed round (SUSPECT to it, so it refutes at once by a STATUS
# with a new ``incarnation``), and declared dead (DEAD broadcast, applied at once by every member)
# after this many failed rounds in a row, with no sign of life in between.
#
# False deaths at 5 % independent loss per datagram (p = 0.05), the figure of the chaos runs:
#   direct path fails (PING or PONG lost):            1 - 0.95^2 = 0.0975
#   one helper's path fails (PINGREQ, PING, PONG, relay): 1 - 0.95^4 = 0.185; three: 0.185^3 = 0.0064
#   a round fails for a live target:                  <= 0.0975 * 0.0064 = 6.2e-4
#   three rounds in a row:                            (6.2e-4)^3 = 2.4e-10
# At one round per second (the most: probe_interval 1), 200 members * 600 s = 120,000 rounds per
# 10 minutes, so 120,000 * 2.4e-10 = 3e-5 expected false deaths (20 members: 3e-6), ignoring the
# refutation that a SUSPECT also gives.  Two rounds would give 0.05 at 200 hosts: not << 1.  A
# kill -9 is noticed 3-4 probe intervals after it (the round under way, then three failed
# rounds), plus the broadcast.
# A target stalled for less than about 2 s (SIGSTOP, a pause, 1.5 s of dropped input) fails at
# most two rounds in a row: it stays a member.
PROBE_FAILED_ROUNDS = 3
# A round's timer handled more than PROBE_LATE_SLACK late (a starved process) is given
# PROBE_LATE_GRACE more, once, so PONGs queued in the socket are read before it concludes.
PROBE_LATE_SLACK = 0.25
PROBE_LATE_GRACE = 0.05
# A helper keeps at most this many PINGREQs it is working on (the rest are not answered).
PROBE_HELPER_PENDING = 64
# DEAD is broadcast at these offsets from the decision (each one a new message): at 5 % loss a
# member misses all three with 1.25e-4 (then the heartbeat rule drops the dead node later).
DEAD_SCHEDULE = (0.0, 0.3, 1.0)
# A node refutes (a STATUS with a new incarnation) a SUSPECT or DEAD about itself at most this
# often.
REFUTE_MIN_GAP = 0.5
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
# ... and tries this often to start its unit while the name is still held by an ended one.
PROVISION_UNIT_NAME_TRIES = 10
SYSTEMCTL_TIMEOUT = 30.0

# Role hooks (/etc/build/role.d): each hook may run this long, then it and its process group are
# killed (SIGKILL); while hooks run, the agent looks at their worker this often.
ROLE_HOOK_TIMEOUT = 300.0
ROLE_HOOK_POLL = 1.0

# The metrics file (hive.toml metrics_file) is rewritten when the view changes, at most this
# often, and once per heartbeat interval otherwise.
METRICS_MIN_GAP = 1.0

# A wake-up of the daemons' loop that brought only datagrams to drop (a flood) is followed by
# this pause, so the next ones are read in one batch instead of one wake-up each.
FLOOD_PAUSE = 0.002

# Rejected datagrams are logged (debug) at most once per this period, with a count.
REJECT_LOG_PERIOD = 60.0

# peers.json is rewritten after a change of the hive at most once per PEERS_WRITE_GAP_PER_MEMBER
# per member or joining node it lists (0.1 s at 50, 0.4 s at 200), at most PEERS_WRITE_GAP_MAX
# apart; an IDENTIFY is written at once (the advisor waits to see it).  Each rewrite costs every
# node O(members + joiners): without a gap, a join into a hive of 200 cost the hive ~5 rewrites
# per member, and 100 nodes joining together a third of their CPU while they joined.
PEERS_WRITE_GAP_PER_MEMBER = 0.002
PEERS_WRITE_GAP_MAX = 0.5
# ... and at most once a second while the node joins (100 joining together rewrote it on every
# member that settled, each entry re-encoded: a third of a joiner's CPU).
PEERS_WRITE_GAP_JOINING = 1.0

# Re-read peers.json written by the local agent at most this often (advisor).
PEERS_FILE_POLL = 1.0
# `hive status --wait` (and install.sh through it) looks at the agent's state this often (s).
STATUS_WAIT_POLL = 0.2
# The advisor answers an IDENTIFY once the agent's peers.json shows it (so the view holds all
# the agent heard before it), looking every VIEW_SYNC_POLL, at most VIEW_SYNC_TIMEOUT.
VIEW_SYNC_POLL = 0.01
VIEW_SYNC_TIMEOUT = 0.3

# A user's policy has this long to answer a newcomer (advisor; it runs in a worker thread), then
# the default policy answers: well under ADVICE_TIMEOUT, so the advice arrives in time even for
# an IDENTIFY first heard at the asker's last retry (IDENTIFY_SCHEDULE[-1] = 1.2 s).
POLICY_TIMEOUT = 1.0
# A batched round (mass joins: one IDENTIFY for a queue of joiners) has this one deadline for
# the whole queue, POLICY_TIMEOUT, not one per joiner: then the default policy answers the rest.
# An advisor remembers what it told each joiner of a batch for this long (or until the joiner is
# a member): a joiner that lost its ADVICE, or asks again, is told the same, so the roles given
# after it in the round stay right.
BATCH_RESERVATION = 5.0
# The agent runs a user's desired_roles off its loop and looks for the answer this often.
POLICY_POLL = 0.1
# Healing: a member that announced a move ('moving') and said nothing more about it for this
# long is no longer waited for (a move takes at most ADVICE_TIMEOUT plus a moment).
MOVE_TIMEOUT = 10.0
# Defaults, in heartbeat intervals, of the grace a need must persist before a node moves and of
# the cool-down after a move (hive.toml: rebalance_grace, rebalance_cooldown, in seconds).
REBALANCE_GRACE_INTERVALS = 2
REBALANCE_COOLDOWN_INTERVALS = 10

# Tasks (build_agent/tasks.py).  A task's time limit unless it or [tasks] timeout sets one, and
# the longest one may set (seven days).
TASK_DEFAULT_TIMEOUT = 3600.0
TASK_MAX_TIMEOUT = 604800.0
# TASK, RESULT and CANCEL are sent again until acknowledged: first after TASK_RETRY_FIRST, then
# each wait doubled up to TASK_RETRY_MAX.
TASK_RETRY_FIRST = 0.3
TASK_RETRY_MAX = 4.0
# A TASK not acknowledged after this many sends while its worker is a member is given up (lost).
TASK_SEND_LIMIT = 40
# A running attempt is probed (TASK probe: "do you still have it?") this often; a worker that
# left the membership is probed every TASK_RETRY_FIRST; its attempt is lost after this many
# unanswered probes (TASK_SUSPECT_PROBES once it left the membership).
TASK_PROBE_INTERVAL = 30.0
TASK_PROBE_LIMIT = 6
TASK_SUSPECT_PROBES = 6
# A worker that answered "busy" (all slots taken) gets no task for this long.
TASK_BUSY_BACKOFF = 1.0
# A task killed at its time limit (child process: SIGTERM to its process group) gets this long
# to exit before SIGKILL; systemd's TimeoutStopSec= for a task unit.
TASK_KILL_GRACE = 5.0
# Without a pidfd to wake us, a worker looks at its running tasks this often.
TASK_POLL = 0.5
# `hive task logs`: the controller asks the worker again after this, at most TASK_LOGS_TRIES times.
TASK_LOGS_RETRY = 0.5
TASK_LOGS_TRIES = 8
# `hive task wait`: one wait on the control socket lasts at most this (the CLI asks again).
TASK_WAIT_MAX = 30.0
# A control-socket client that sends no complete request within this is disconnected.
CONTROL_IDLE_TIMEOUT = 10.0

# Discovery beyond one broadcast domain (build_agent.discovery, build_agent.etcd).
# A node heard on a broadcast or multicast socket (a method we send by too) within this many of
# the longest routine STATUS intervals (STATUS_INTERVALS_MAX heartbeats) is reached that way;
# every other node we know gets the messages meant for everyone by unicast.  (Counted in our
# heartbeat intervals only, 30 s, a member whose STATUS comes every 30 s or more fell out of it
# now and then, and was sent unicast copies of every broadcast.)
GROUP_HEARD_INTERVALS = 3
# An address learned from a WELCOME's list or from etcd is tried for this long without an answer.
LEARNED_ADDRESS_TTL = 30.0
# A seed that is not a member is sent HELLO again this often (it was down, or the hive split).
SEED_RETRY = 30.0
# Seed names are resolved again this often; a name that did not resolve is tried again after
# SEED_RESOLVE_RETRY; at start the agent waits at most SEED_RESOLVE_WAIT for the first answers.
SEED_RESOLVE_INTERVAL = 300.0
SEED_RESOLVE_RETRY = 10.0
SEED_RESOLVE_WAIT = 2.0
# A WELCOME lists at most this many addresses of the hive (it must fit in one datagram).
WELCOME_MAX_ADDRESSES = 256
# etcd: one HTTP request may take this long.
ETCD_REQUEST_TIMEOUT = 1.0
# The member list is read from etcd this often while joining (else once per heartbeat).
ETCD_JOINING_POLL = 0.5
# While etcd does not answer, it is tried again this often.
ETCD_RETRY = 2.0
# A member's key lives this many of its heartbeat intervals after its last renewal (the lease
# is renewed at every heartbeat), and at least ETCD_MIN_TTL (etcd's TTLs are whole seconds).
ETCD_LEASE_INTERVALS = 3
ETCD_MIN_TTL = 2
# The role guard: before asking, a joiner waits at most this long for the node etcd says
# settled last to be in its view (then asks anyway; the guard still refuses a stale decision).
GUARD_VIEW_WAIT = 2.5
