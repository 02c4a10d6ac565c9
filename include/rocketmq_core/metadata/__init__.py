"""Cluster metadata: scope, snapshot, diff, plan and apply, mqadmin exportMetadata files.

One module per step: ``scope`` (what is compared), ``snapshot`` (what a cluster holds, and the
exportMetadata format), ``fields`` (what of an object is compared), ``layout`` (where a topic
lives across brokers), ``diff``, ``plan`` and ``apply``.

A migration first makes the target carry the source's topics, groups and ACL entries. This
module reads both clusters in one request per broker and kind, says what differs in terms a
reviewer can check, and applies exactly that, idempotently. ACL entries are in snapshots and
diffs but not in the exportMetadata format (it has no place for them, and files leak secrets).

Normalisation rules (what a diff compares, and why), applied identically by ``diff``, by
``apply_plan``'s "already done?" check and by its verification:

1. Only user metadata is in scope: system topics (``model.is_system_topic`` plus the broker's
   own list, which names e.g. the cluster and broker topics), %RETRY% and %DLQ% topics, and
   system groups (``model.is_system_group``) are always out, whatever the patterns say.
2. Topic queue counts are cluster totals, summed over the master brokers holding the topic,
   as ``mqadmin exportMetadata -c`` writes them, and a topic's perm is the widest of its
   brokers'; ``layout`` keeps where it lives: each broker's queue counts and perm (``Share``).
   Between two live clusters the diff compares per target broker what the source's layout maps
   to (``BrokerMapping``: names or sorted order broker to broker, else a topic on some brokers
   stays on as many, one on every broker goes on every broker with the same per-broker counts),
   with the widest perm on every broker unless ``Scope.per_broker_perm``. A source without
   layout (an imported file) gives totals: kept as the target already splits them, else spread
   evenly (``split_queues``) over the brokers holding the topic, or all masters for a new one.
   A file's perm is one broker's (mqadmin keeps the last broker it read), so it only widens.
3. Whether a topic is ordered is decided by the name server's ORDER_TOPIC_CONFIG table when
   it has one: ``mqadmin updateTopic -o true`` writes it, and every broker (4.9 and 5.x) copies
   it into its topic configs at each registration, so a broker's flag may lag by up to 30 s.
   Without that table the flag of 5.x brokers counts; a 4.9 broker ignores the flag in create
   requests, so its own flag is only ever a (possibly stale) copy of the table.
4. Topic attributes and the group fields 4.9 does not have (consumeMessageOrderly,
   consumeTimeoutMinute, groupRetryPolicy, groupSysFlag, attributes) are compared only when
   both sides are 5.x; a side without them would make every object look changed. Attribute
   defaults count as set (absent message.type = NORMAL, as the broker reads it), and an
   absent or null-only groupRetryPolicy equals the 5.x default ``{"type": "CUSTOMIZED"}``.
   When they are not compared, apply keeps the target's values instead of resetting them.
5. A group is the same on every master; the first broker by name stands for the cluster and
   retryQueueNums is not summed. mqadmin exportMetadata sums it over the masters: a file's
   value equal to that sum on the target counts as the target's per-broker value.
6. ACL entries are compared per kind (4.9 plain accounts, 5.x users, 5.x policies) and only
   when that kind could be read on both sides; secrets are compared but shown as ``***``.
"""
