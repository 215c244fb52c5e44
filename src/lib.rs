//! walkeeper: a PostgreSQL WAL receiver and WAL archive.
//!
//! Layers, top to bottom (see DESIGN.md): `conn` (conninfo, TLS, auth), `protocol` (pure codecs),
//! `stream` (one replication session, timelines, reconnects), `wal` (LSN math, names, history, decoder),
//! `archive` (where WAL lands and how it is served back), `service` (many sources in one process, HTTP),
//! `cli` (argument parsing, exit codes).

pub mod archive;
pub mod calendar;
pub mod cli;
pub mod conn;
pub mod protocol;
pub mod service;
pub mod stream;
pub mod wal;
