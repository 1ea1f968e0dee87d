"""Table and column names of the botwatch contract (see DESIGN.md), in one place.

Users' scripts and dashboards read these names: change them only with the contract.
"""
from __future__ import annotations

# ---- tables (each a Delta table at <warehouse>/<name>) ----
ACCOUNTS = "accounts"
EVENTS = "events"
EDGES = "edges"
LABELS = "labels"
TRUTH = "truth"
QUARANTINE = "quarantine"
ACTIVITY_DAILY = "activity_daily"
ACTIVITY_WINDOW = "activity_window"  # rolled window sums per account (internal state of the features step)
FEATURES = "features"
MODEL_REGISTRY = "model_registry"
SCORES = "scores"
SCORES_LATEST = "scores_latest"
REVIEW_QUEUE = "review_queue"
METRICS = "metrics"
DRIFT = "drift"
EMBEDDING_CACHE = "embedding_cache"
RUN_LOG = "run_log"  # one row per (run_date, step) of the nightly run: status, input versions
RUN_LOCK = "run_lock"  # a folder of lock files, one per run date being run (botwatch.nightly.DateLock)

INPUT_TABLES = (ACCOUNTS, EVENTS, EDGES, LABELS)

# ---- columns ----
ACCOUNT_ID = "account_id"
CREATED_AT = "created_at"
COUNTRY = "country"
VERIFIED = "verified"
PROFILE_COMPLETENESS = "profile_completeness"
SIGNUP_IP_HASH = "signup_ip_hash"
SIGNUP_DEVICE_ID = "signup_device_id"

EVENT_TS = "event_ts"
EVENT_TYPE = "event_type"
EVENT_DATE = "event_date"
IP_HASH = "ip_hash"
DEVICE_ID = "device_id"
# events: a hash of an ingested file's own extra columns (target ids, event ids), only where it had some:
# events that differ only there are two events, and validate's duplicate check must see that too.
SOURCE_EXTRAS_HASH = "source_extras_hash"

SRC = "src"
DST = "dst"

LABEL = "label"
SOURCE = "source"
LABELED_AT = "labeled_at"
# resolved training labels (botwatch.labels)
AS_OF_DATE = "as_of_date"
WEIGHT = "weight"

FAMILY = "family"

TABLE = "table"
REASON = "reason"
RUN_DATE = "run_date"
ROW_JSON = "row_json"
STEP = "step"  # quarantine: the step that put the row there (ingest or validate)

DAY = "day"
SOURCE_EVENTS = "source_events"  # activity_daily: rows its day had in `events` when the partial was built

MODEL_NAME = "model_name"
VERSION = "version"
STAGE = "stage"

STAGE1_SCORE = "stage1_score"
STAGE2_SCORE = "stage2_score"
SCORE = "score"
DECISION = "decision"
MODEL_VERSION = "model_version"

NAME = "name"
VALUE = "value"

# heavy model inputs (botwatch.models.sequences): per-account event sequences and neighbour means
SEQ_EVENT_TYPE = "seq_event_type"
SEQ_DT_BUCKET = "seq_dt_bucket"
SEQ_HOUR_SIN = "seq_hour_sin"
SEQ_HOUR_COS = "seq_hour_cos"
SEQ_LEN = "seq_len"
NBR_PREFIX = "nbr_"
NBR_COUNT = "nbr_count"

# ---- vocabularies ----
EVENT_TYPES = ("post", "comment", "like", "follow", "login")
LABEL_SOURCES = ("investigator", "appeal", "user_report", "propagated")
FAMILIES = ("human", "scheduled", "mimic", "botnet", "cyborg", "follow_spam")
BOT_FAMILIES = FAMILIES[1:]
MODEL_STAGES = ("champion", "challenger", "retired")
DECISIONS = ("action", "review", "none")
REVIEW_REASONS = ("uncertain", "stratified", "exploration")

# Heavy-model sequence encodings, shared by the Spark side (models.sequences) and the torch side
# (models.heavy), which must import without pyspark. Index 0 of the event-type vocabulary is
# padding; known types are 1..n; unknown types get n + 1.
EVENT_TYPE_PAD = 0
EVENT_TYPE_UNKNOWN = len(EVENT_TYPES) + 1
EVENT_TYPE_VOCAB = len(EVENT_TYPES) + 2
# Δt buckets are floor(log2(seconds + 1)), capped: 2^31 s is ~68 years.
DT_BUCKET_MAX = 31
DT_BUCKETS = DT_BUCKET_MAX + 1

# Accounts' countries and their UTC offsets in hours (the simulator's world, and the
# offsets used for local-time features of ingested data whose country matches).
COUNTRY_UTC_OFFSET = {
    "US": -5,
    "BR": -3,
    "GB": 0,
    "DE": 1,
    "NG": 1,
    "IN": 5,
    "ID": 7,
    "JP": 9,
}


def table_path(warehouse: str, table: str) -> str:
    """Path of a Delta table under the warehouse root: ``<warehouse>/<table>``."""
    return f"{warehouse.rstrip('/')}/{table}"
