//! A replication session: IDENTIFY_SYSTEM → TIMELINE_HISTORY → START_REPLICATION → the CopyBoth loop,
//! feedback, end-of-timeline handling and reconnects.
