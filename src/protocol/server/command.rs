//! The replication command language, read as PostgreSQL 18's walsender reads it (repl_scanner.l,
//! repl_gram.y, and the option checks of walsender.c), which accepts what clients of 13 to 18 send:
//!
//! - keywords are upper case only (the scanner is case sensitive: `identify_system` is an identifier, so
//!   the query is SQL); unquoted identifiers are folded to lower case, `"quoted"` ones kept as written;
//!   identifiers longer than 63 bytes are truncated with a NOTICE;
//! - `'strings'` double `''` for a quote; `X/Y` is an LSN; unsigned integers as C's strtoul reads them;
//! - one command, optionally followed by one `;`; whitespace anywhere between tokens;
//! - whether a query is a replication command at all is decided by its first token alone: anything else
//!   is SQL, which a physical walsender refuses ([`errors::sql_not_supported`]), even an empty query.
//!   `SELECT pg_catalog.set_config('search_path', '', false);` is recognised on its own: logical
//!   walreceivers, PostgreSQL 17+'s slot sync worker and pg_recvlogical send it first, but physical
//!   walreceivers of 13–18 (libpqwalreceiver.c) and pg_receivewal do not, and PostgreSQL refuses it on a
//!   physical connection like any SQL.
//!
//! `CREATE_REPLICATION_SLOT` takes both the 13/14 options (`RESERVE_WAL`) and the 15+ list
//! (`(RESERVE_WAL true, …)`), checked as parseCreateReplSlotOptions checks them. BASE_BACKUP, UPLOAD_MANIFEST
//! and the logical commands are recognised so that [`Command::refusal`] can refuse them.
//!
//! Two deliberate differences: an LSN half with more than 8 hex digits is refused ("invalid streaming start
//! location") where PostgreSQL's sscanf silently keeps the low 32 bits; and BASE_BACKUP accepts any
//! arguments (walkeeper refuses it whatever they are, so the refusal is not hidden behind a syntax error).

use super::errors;
use crate::protocol::ServerError;
use crate::wal::segment::TimeLineId;
use crate::wal::Lsn;

/// What `pg_catalog.set_config('search_path', …)` clients send first (libpq's ALWAYS_SECURE_SEARCH_PATH_SQL).
pub const SECURE_SEARCH_PATH_SQL: &str = "SELECT pg_catalog.set_config('search_path', '', false);";

/// NAMEDATALEN - 1.
const MAX_IDENTIFIER: usize = 63;

/// A parsed query, and the notices PostgreSQL would send while parsing it (identifier truncation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub statement: Statement,
    pub notices: Vec<ServerError>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Statement {
    Command(Command),
    /// Not a replication command. A physical walsender answers [`errors::sql_not_supported`].
    Sql(Sql),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sql {
    /// Exactly [`SECURE_SEARCH_PATH_SQL`].
    SecureSearchPath,
    Other,
}

/// A replication command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    IdentifySystem,
    /// `SHOW name` (a dotted name for custom settings), folded to lower case unless quoted.
    Show {
        name: String,
    },
    TimelineHistory {
        timeline: TimeLineId,
    },
    /// `START_REPLICATION [SLOT s] [PHYSICAL] X/Y [TIMELINE n]`; no TIMELINE means the current one.
    StartReplication {
        slot: Option<String>,
        start: Lsn,
        timeline: Option<TimeLineId>,
    },
    ReadReplicationSlot {
        slot: String,
    },
    /// A physical slot; its name has passed PostgreSQL's slot name check.
    CreatePhysicalSlot {
        slot: String,
        temporary: bool,
        reserve_wal: bool,
    },
    DropReplicationSlot {
        slot: String,
        wait: bool,
    },
    CreateLogicalSlot {
        slot: String,
    },
    StartLogicalReplication {
        slot: String,
    },
    AlterReplicationSlot {
        slot: String,
    },
    BaseBackup,
    UploadManifest,
}

impl Command {
    /// The command's name: its CommandComplete tag.
    pub fn tag(&self) -> &'static str {
        match self {
            Command::IdentifySystem => "IDENTIFY_SYSTEM",
            Command::Show { .. } => "SHOW",
            Command::TimelineHistory { .. } => "TIMELINE_HISTORY",
            Command::StartReplication { .. } | Command::StartLogicalReplication { .. } => "START_REPLICATION",
            Command::ReadReplicationSlot { .. } => "READ_REPLICATION_SLOT",
            Command::CreatePhysicalSlot { .. } | Command::CreateLogicalSlot { .. } => {
                "CREATE_REPLICATION_SLOT"
            }
            Command::DropReplicationSlot { .. } => "DROP_REPLICATION_SLOT",
            Command::AlterReplicationSlot { .. } => "ALTER_REPLICATION_SLOT",
            Command::BaseBackup => "BASE_BACKUP",
            Command::UploadManifest => "UPLOAD_MANIFEST",
        }
    }

    /// The error for a command walkeeper never serves, worded as PostgreSQL words it to a physical
    /// replication connection where it has words for it. `None` for the commands a walsender serves.
    pub fn refusal(&self) -> Option<ServerError> {
        match self {
            Command::CreateLogicalSlot { .. } | Command::StartLogicalReplication { .. } => {
                Some(errors::logical_decoding_requires_database())
            }
            // ALTER_REPLICATION_SLOT changes logical slots' options; walkeeper has no such slot.
            // (PostgreSQL refuses it for an existing physical slot with another message.)
            Command::AlterReplicationSlot { slot } => Some(errors::slot_does_not_exist(slot)),
            Command::BaseBackup | Command::UploadManifest => Some(errors::not_served(self.tag())),
            _ => None,
        }
    }
}

/// Parses one query of a replication connection.
pub fn parse(query: &[u8]) -> Result<Parsed, ServerError> {
    let mut p = Parser { scanner: Scanner { input: query, pos: 0, notices: Vec::new() }, peeked: None };
    let first = p.next()?;
    let Token::Kw(kw) = first else {
        let sql = if query == SECURE_SEARCH_PATH_SQL.as_bytes() { Sql::SecureSearchPath } else { Sql::Other };
        return Ok(Parsed { statement: Statement::Sql(sql), notices: Vec::new() });
    };
    let command = match kw {
        Kw::IdentifySystem => Command::IdentifySystem,
        Kw::Show => Command::Show { name: p.var_name()? },
        Kw::TimelineHistory => Command::TimelineHistory { timeline: p.timeline()? },
        Kw::ReadReplicationSlot => Command::ReadReplicationSlot { slot: p.var_name()? },
        Kw::StartReplication => p.start_replication()?,
        Kw::CreateReplicationSlot => p.create_slot()?,
        Kw::DropReplicationSlot => {
            let slot = p.ident()?;
            let wait = p.eat_kw(Kw::Wait)?;
            Command::DropReplicationSlot { slot, wait }
        }
        Kw::AlterReplicationSlot => {
            let slot = p.ident()?;
            p.expect_char(b'(')?;
            p.generic_options()?;
            Command::AlterReplicationSlot { slot }
        }
        Kw::BaseBackup => {
            // Any arguments: the command is refused whatever they are (see the module documentation).
            return Ok(Parsed { statement: Statement::Command(Command::BaseBackup), notices: Vec::new() });
        }
        Kw::UploadManifest => Command::UploadManifest,
        _ => return Ok(Parsed { statement: Statement::Sql(Sql::Other), notices: Vec::new() }),
    };
    // firstcmd: command opt_semicolon, then the end of the query.
    p.eat(Token::Char(b';'))?;
    if p.next()? != Token::End {
        return Err(syntax());
    }
    Ok(Parsed { statement: Statement::Command(command), notices: p.scanner.notices })
}

fn syntax() -> ServerError {
    errors::syntax_error("syntax error")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kw {
    BaseBackup,
    IdentifySystem,
    ReadReplicationSlot,
    Show,
    Timeline,
    StartReplication,
    CreateReplicationSlot,
    DropReplicationSlot,
    AlterReplicationSlot,
    TimelineHistory,
    Physical,
    ReserveWal,
    Logical,
    Slot,
    Temporary,
    TwoPhase,
    ExportSnapshot,
    NoexportSnapshot,
    UseSnapshot,
    Wait,
    UploadManifest,
}

/// repl_scanner.l's keywords, matched case-sensitively.
const KEYWORDS: &[(&str, Kw)] = &[
    ("BASE_BACKUP", Kw::BaseBackup),
    ("IDENTIFY_SYSTEM", Kw::IdentifySystem),
    ("READ_REPLICATION_SLOT", Kw::ReadReplicationSlot),
    ("SHOW", Kw::Show),
    ("TIMELINE", Kw::Timeline),
    ("START_REPLICATION", Kw::StartReplication),
    ("CREATE_REPLICATION_SLOT", Kw::CreateReplicationSlot),
    ("DROP_REPLICATION_SLOT", Kw::DropReplicationSlot),
    ("ALTER_REPLICATION_SLOT", Kw::AlterReplicationSlot),
    ("TIMELINE_HISTORY", Kw::TimelineHistory),
    ("PHYSICAL", Kw::Physical),
    ("RESERVE_WAL", Kw::ReserveWal),
    ("LOGICAL", Kw::Logical),
    ("SLOT", Kw::Slot),
    ("TEMPORARY", Kw::Temporary),
    ("TWO_PHASE", Kw::TwoPhase),
    ("EXPORT_SNAPSHOT", Kw::ExportSnapshot),
    ("NOEXPORT_SNAPSHOT", Kw::NoexportSnapshot),
    ("USE_SNAPSHOT", Kw::UseSnapshot),
    ("WAIT", Kw::Wait),
    ("UPLOAD_MANIFEST", Kw::UploadManifest),
];

impl Kw {
    fn text(self) -> &'static str {
        KEYWORDS.iter().find(|(_, k)| *k == self).map_or("", |(t, _)| t)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Kw(Kw),
    Ident(String),
    SConst(String),
    UConst(u32),
    RecPtr(Lsn),
    Char(u8),
    End,
}

struct Scanner<'a> {
    input: &'a [u8],
    pos: usize,
    notices: Vec<ServerError>,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0c | 0x0b)
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

impl Scanner<'_> {
    fn run(&self, from: usize, pred: impl Fn(u8) -> bool) -> usize {
        self.input[from..].iter().take_while(|&&b| pred(b)).count()
    }

    fn next(&mut self) -> Result<Token, ServerError> {
        self.pos += self.run(self.pos, is_space);
        let start = self.pos;
        let Some(&c) = self.input.get(start) else { return Ok(Token::End) };
        // flex takes the longest match: `{hexdigit}+/{hexdigit}+` beats a number or identifier prefix.
        let hex = self.run(start, |b| b.is_ascii_hexdigit());
        if hex > 0 && self.input.get(start + hex) == Some(&b'/') {
            let lo = self.run(start + hex + 1, |b| b.is_ascii_hexdigit());
            if lo > 0 {
                self.pos = start + hex + 1 + lo;
                return self.recptr(&self.input[start..start + hex], &self.input[start + hex + 1..self.pos]);
            }
        }
        if c.is_ascii_digit() {
            let n = self.run(start, |b| b.is_ascii_digit());
            self.pos = start + n;
            return Ok(Token::UConst(strtoul_u32(&self.input[start..self.pos])));
        }
        if is_ident_start(c) {
            let n = self.run(start, is_ident_cont);
            self.pos = start + n;
            let word = &self.input[start..self.pos];
            if let Some((_, kw)) = KEYWORDS.iter().find(|(t, _)| t.as_bytes() == word) {
                return Ok(Token::Kw(*kw));
            }
            let folded: Vec<u8> = word.iter().map(u8::to_ascii_lowercase).collect();
            return Ok(Token::Ident(self.truncate(folded)));
        }
        match c {
            b'\'' => self.quoted(b'\'').map(Token::SConst),
            b'"' => {
                let raw = self.quoted(b'"')?;
                Ok(Token::Ident(self.truncate(raw.into_bytes())))
            }
            _ => {
                self.pos += 1;
                Ok(Token::Char(c))
            }
        }
    }

    fn recptr(&self, hi: &[u8], lo: &[u8]) -> Result<Token, ServerError> {
        let half = |h: &[u8]| {
            let digits = &h[h.iter().take_while(|&&b| b == b'0').count()..];
            if digits.len() > 8 {
                return None;
            }
            std::str::from_utf8(h).ok().and_then(|s| u64::from_str_radix(s, 16).ok())
        };
        match (half(hi), half(lo)) {
            (Some(hi), Some(lo)) => Ok(Token::RecPtr(Lsn(hi << 32 | lo))),
            _ => Err(errors::syntax_error("invalid streaming start location")),
        }
    }

    /// A quoted string or identifier; for strings a doubled quote stands for one (identifiers have no such
    /// escape in repl_scanner.l: `"a""b"` is two identifiers).
    fn quoted(&mut self, quote: u8) -> Result<String, ServerError> {
        let mut out = Vec::new();
        let mut i = self.pos + 1;
        loop {
            match self.input.get(i) {
                None => return Err(errors::syntax_error("unterminated quoted string")),
                Some(&b) if b == quote => {
                    if quote == b'\'' && self.input.get(i + 1) == Some(&b'\'') {
                        out.push(b'\'');
                        i += 2;
                    } else {
                        self.pos = i + 1;
                        return Ok(String::from_utf8_lossy(&out).into_owned());
                    }
                }
                Some(&b) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
    }

    /// truncate_identifier: at most 63 bytes, with a NOTICE when cut.
    fn truncate(&mut self, word: Vec<u8>) -> String {
        if word.len() <= MAX_IDENTIFIER {
            return String::from_utf8_lossy(&word).into_owned();
        }
        let full = String::from_utf8_lossy(&word).into_owned();
        let cut = String::from_utf8_lossy(&word[..MAX_IDENTIFIER]).into_owned();
        self.notices.push(errors::notice(
            errors::NAME_TOO_LONG,
            format!("identifier \"{full}\" will be truncated to \"{cut}\""),
        ));
        cut
    }
}

/// C's `strtoul(s, NULL, 10)` stored in a uint32, as repl_scanner.l does: saturating at 2^64 - 1, then the
/// low 32 bits. (So `TIMELINE 4294967296` is timeline 0, refused as invalid, as by PostgreSQL.)
fn strtoul_u32(digits: &[u8]) -> u32 {
    let n = digits.iter().fold(0u64, |n, d| n.saturating_mul(10).saturating_add(u64::from(d - b'0')));
    n as u32
}

struct Parser<'a> {
    scanner: Scanner<'a>,
    peeked: Option<Token>,
}

/// An option value of a `(name value, …)` list.
#[derive(Clone, Debug, PartialEq, Eq)]
enum OptValue {
    None,
    Str(String),
    Int(u32),
    Bool(bool),
}

impl Parser<'_> {
    fn next(&mut self) -> Result<Token, ServerError> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.scanner.next(),
        }
    }

    fn peek(&mut self) -> Result<&Token, ServerError> {
        if self.peeked.is_none() {
            self.peeked = Some(self.scanner.next()?);
        }
        Ok(self.peeked.as_ref().unwrap_or(&Token::End))
    }

    /// Consumes the next token if it is `t`.
    fn eat(&mut self, t: Token) -> Result<bool, ServerError> {
        let found = *self.peek()? == t;
        if found {
            self.next()?;
        }
        Ok(found)
    }

    fn eat_kw(&mut self, kw: Kw) -> Result<bool, ServerError> {
        self.eat(Token::Kw(kw))
    }

    fn expect_char(&mut self, c: u8) -> Result<(), ServerError> {
        match self.next()? {
            Token::Char(x) if x == c => Ok(()),
            _ => Err(syntax()),
        }
    }

    fn ident(&mut self) -> Result<String, ServerError> {
        match self.next()? {
            Token::Ident(s) => Ok(s),
            _ => Err(syntax()),
        }
    }

    /// var_name: IDENT ('.' IDENT)*
    fn var_name(&mut self) -> Result<String, ServerError> {
        let mut name = self.ident()?;
        while self.eat(Token::Char(b'.'))? {
            name.push('.');
            name.push_str(&self.ident()?);
        }
        Ok(name)
    }

    /// UCONST that must name a timeline (checked as soon as it is read, as the grammar's action does).
    fn timeline(&mut self) -> Result<TimeLineId, ServerError> {
        match self.next()? {
            Token::UConst(0) => Err(errors::syntax_error("invalid timeline 0")),
            Token::UConst(n) => Ok(n),
            _ => Err(syntax()),
        }
    }

    fn recptr(&mut self) -> Result<Lsn, ServerError> {
        match self.next()? {
            Token::RecPtr(l) => Ok(l),
            _ => Err(syntax()),
        }
    }

    fn start_replication(&mut self) -> Result<Command, ServerError> {
        let slot = if self.eat_kw(Kw::Slot)? { Some(self.ident()?) } else { None };
        if let Some(slot) = &slot {
            if self.eat_kw(Kw::Logical)? {
                self.recptr()?;
                if self.eat(Token::Char(b'('))? {
                    self.plugin_options()?;
                }
                return Ok(Command::StartLogicalReplication { slot: slot.clone() });
            }
        }
        self.eat_kw(Kw::Physical)?;
        let start = self.recptr()?;
        let timeline = if self.eat_kw(Kw::Timeline)? { Some(self.timeline()?) } else { None };
        Ok(Command::StartReplication { slot, start, timeline })
    }

    /// plugin_opt_list ')': IDENT [SCONST] (',' IDENT [SCONST])*
    fn plugin_options(&mut self) -> Result<(), ServerError> {
        loop {
            self.ident()?;
            if matches!(self.peek()?, Token::SConst(_)) {
                self.next()?;
            }
            match self.next()? {
                Token::Char(b',') => {}
                Token::Char(b')') => return Ok(()),
                _ => return Err(syntax()),
            }
        }
    }

    /// generic_option_list ')': the list after '(' of BASE_BACKUP, CREATE/ALTER_REPLICATION_SLOT.
    fn generic_options(&mut self) -> Result<Vec<(String, OptValue)>, ServerError> {
        let mut options = Vec::new();
        loop {
            let name = match self.next()? {
                Token::Ident(s) => s,
                // ident_or_keyword: every keyword but READ_REPLICATION_SLOT, by its lower-case name.
                Token::Kw(k) if k != Kw::ReadReplicationSlot => k.text().to_ascii_lowercase(),
                _ => return Err(syntax()),
            };
            let value = match self.peek()? {
                Token::Ident(_) | Token::SConst(_) => match self.next()? {
                    Token::Ident(s) | Token::SConst(s) => OptValue::Str(s),
                    _ => OptValue::None,
                },
                Token::UConst(n) => {
                    let n = *n;
                    self.next()?;
                    OptValue::Int(n)
                }
                _ => OptValue::None,
            };
            options.push((name, value));
            match self.next()? {
                Token::Char(b',') => {}
                Token::Char(b')') => return Ok(options),
                _ => return Err(syntax()),
            }
        }
    }

    fn create_slot(&mut self) -> Result<Command, ServerError> {
        let slot = self.ident()?;
        let temporary = self.eat_kw(Kw::Temporary)?;
        let logical = match self.next()? {
            Token::Kw(Kw::Physical) => false,
            Token::Kw(Kw::Logical) => {
                self.ident()?; // output plugin
                true
            }
            _ => return Err(syntax()),
        };
        let options =
            if self.eat(Token::Char(b'('))? { self.generic_options()? } else { self.legacy_slot_options()? };
        let reserve_wal = slot_options(&options, logical)?;
        if logical {
            return Ok(Command::CreateLogicalSlot { slot });
        }
        if let Some(e) = errors::invalid_slot_name(&slot) {
            return Err(e);
        }
        Ok(Command::CreatePhysicalSlot { slot, temporary, reserve_wal })
    }

    /// create_slot_legacy_opt_list (13/14 syntax, still accepted): bare keywords.
    fn legacy_slot_options(&mut self) -> Result<Vec<(String, OptValue)>, ServerError> {
        let mut options = Vec::new();
        loop {
            let option = match self.peek()? {
                Token::Kw(Kw::ReserveWal) => ("reserve_wal", OptValue::Bool(true)),
                Token::Kw(Kw::TwoPhase) => ("two_phase", OptValue::Bool(true)),
                Token::Kw(Kw::ExportSnapshot) => ("snapshot", OptValue::Str("export".into())),
                Token::Kw(Kw::NoexportSnapshot) => ("snapshot", OptValue::Str("nothing".into())),
                Token::Kw(Kw::UseSnapshot) => ("snapshot", OptValue::Str("use".into())),
                _ => return Ok(options),
            };
            self.next()?;
            options.push((option.0.to_string(), option.1));
        }
    }
}

/// parseCreateReplSlotOptions: returns RESERVE_WAL; refuses repeated options, options of the other slot
/// kind, bad values and unknown names, in PostgreSQL's words.
fn slot_options(options: &[(String, OptValue)], logical: bool) -> Result<bool, ServerError> {
    let conflicting = || errors::syntax_error("conflicting or redundant options");
    let mut reserve_wal = false;
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in options {
        let name = name.as_str();
        let allowed = match name {
            "snapshot" | "two_phase" | "failover" => logical,
            "reserve_wal" => !logical,
            _ => return Err(errors::error(errors::INTERNAL_ERROR, format!("unrecognized option: {name}"))),
        };
        if !allowed || seen.contains(&name) {
            return Err(conflicting());
        }
        seen.push(name);
        match name {
            "snapshot" => {
                let action = option_string(name, value)?;
                if !matches!(action.as_str(), "export" | "nothing" | "use") {
                    return Err(errors::error(
                        errors::INVALID_PARAMETER_VALUE,
                        format!(
                            "unrecognized value for CREATE_REPLICATION_SLOT option \"{name}\": \"{action}\""
                        ),
                    ));
                }
            }
            "reserve_wal" => reserve_wal = option_bool(name, value)?,
            _ => {
                option_bool(name, value)?;
            }
        }
    }
    Ok(reserve_wal)
}

/// defGetString.
fn option_string(name: &str, value: &OptValue) -> Result<String, ServerError> {
    match value {
        OptValue::None => Err(errors::syntax_error(format!("{name} requires a parameter"))),
        OptValue::Str(s) => Ok(s.clone()),
        OptValue::Int(n) => Ok(n.to_string()),
        OptValue::Bool(b) => Ok(b.to_string()),
    }
}

/// defGetBoolean: no value is true; 0/1; true/false/on/off in any case.
fn option_bool(name: &str, value: &OptValue) -> Result<bool, ServerError> {
    let bad = || errors::syntax_error(format!("{name} requires a Boolean value"));
    match value {
        OptValue::None => Ok(true),
        OptValue::Bool(b) => Ok(*b),
        OptValue::Int(0) => Ok(false),
        OptValue::Int(1) => Ok(true),
        OptValue::Int(_) => Err(bad()),
        OptValue::Str(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "on" => Ok(true),
            "false" | "off" => Ok(false),
            _ => Err(bad()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cmd(q: &str) -> Command {
        match parse(q.as_bytes()) {
            Ok(Parsed { statement: Statement::Command(c), .. }) => c,
            other => panic!("{q:?}: {other:?}"),
        }
    }

    fn err(q: &str) -> ServerError {
        match parse(q.as_bytes()) {
            Err(e) => e,
            Ok(p) => panic!("{q:?} parsed as {p:?}"),
        }
    }

    fn sql(q: &str) -> Sql {
        match parse(q.as_bytes()) {
            Ok(Parsed { statement: Statement::Sql(s), .. }) => s,
            other => panic!("{q:?}: {other:?}"),
        }
    }

    #[test]
    fn what_walreceivers_and_tools_send() {
        assert_eq!(cmd("IDENTIFY_SYSTEM"), Command::IdentifySystem);
        assert_eq!(cmd("  IDENTIFY_SYSTEM ;  "), Command::IdentifySystem);
        assert_eq!(cmd("TIMELINE_HISTORY 2"), Command::TimelineHistory { timeline: 2 });
        assert_eq!(cmd("SHOW wal_segment_size"), Command::Show { name: "wal_segment_size".into() });
        assert_eq!(cmd("SHOW Data_Directory_Mode"), Command::Show { name: "data_directory_mode".into() });
        assert_eq!(cmd("SHOW my.\"Custom\""), Command::Show { name: "my.Custom".into() });
        // libpqwalreceiver: START_REPLICATION [SLOT "s"] X/Y TIMELINE n (no PHYSICAL).
        assert_eq!(
            cmd("START_REPLICATION SLOT \"pg_walreceiver_42\" 0/3000000 TIMELINE 1"),
            Command::StartReplication {
                slot: Some("pg_walreceiver_42".into()),
                start: Lsn(0x3000000),
                timeline: Some(1)
            }
        );
        // pg_receivewal and walkeeper: PHYSICAL, zero-padded halves.
        assert_eq!(
            cmd("START_REPLICATION PHYSICAL 1/0A000000 TIMELINE 3"),
            Command::StartReplication { slot: None, start: Lsn(0x1_0A00_0000), timeline: Some(3) }
        );
        assert_eq!(
            cmd("START_REPLICATION abc/DEF"),
            Command::StartReplication { slot: None, start: Lsn(0xabc_0000_0def), timeline: None }
        );
        assert_eq!(
            cmd("READ_REPLICATION_SLOT \"arch\""),
            Command::ReadReplicationSlot { slot: "arch".into() }
        );
        assert_eq!(
            cmd("DROP_REPLICATION_SLOT s WAIT;"),
            Command::DropReplicationSlot { slot: "s".into(), wait: true }
        );
        assert_eq!(
            cmd("DROP_REPLICATION_SLOT s"),
            Command::DropReplicationSlot { slot: "s".into(), wait: false }
        );
    }

    #[test]
    fn create_slot_in_both_syntaxes() {
        let physical = |slot: &str, temporary, reserve_wal| Command::CreatePhysicalSlot {
            slot: slot.into(),
            temporary,
            reserve_wal,
        };
        // 13/14 walreceivers and pg_receivewal, then 15+.
        assert_eq!(
            cmd("CREATE_REPLICATION_SLOT \"pg_walreceiver_7\" TEMPORARY PHYSICAL RESERVE_WAL"),
            physical("pg_walreceiver_7", true, true)
        );
        assert_eq!(
            cmd("CREATE_REPLICATION_SLOT \"arch\" PHYSICAL (RESERVE_WAL)"),
            physical("arch", false, true)
        );
        assert_eq!(cmd("CREATE_REPLICATION_SLOT arch PHYSICAL"), physical("arch", false, false));
        assert_eq!(
            cmd("CREATE_REPLICATION_SLOT arch PHYSICAL (reserve_wal 'off')"),
            physical("arch", false, false)
        );
        assert_eq!(
            cmd("CREATE_REPLICATION_SLOT arch PHYSICAL (RESERVE_WAL 1)"),
            physical("arch", false, true)
        );
        assert_eq!(
            cmd("CREATE_REPLICATION_SLOT arch PHYSICAL (RESERVE_WAL TRUE)"),
            physical("arch", false, true)
        );
        assert_eq!(
            cmd("CREATE_REPLICATION_SLOT sub TEMPORARY LOGICAL pgoutput (SNAPSHOT 'nothing', TWO_PHASE)"),
            Command::CreateLogicalSlot { slot: "sub".into() }
        );
        assert_eq!(
            err("CREATE_REPLICATION_SLOT arch PHYSICAL (RESERVE_WAL, RESERVE_WAL)").message,
            "conflicting or redundant options"
        );
        assert_eq!(
            err("CREATE_REPLICATION_SLOT arch PHYSICAL (SNAPSHOT 'use')").message,
            "conflicting or redundant options"
        );
        assert_eq!(
            err("CREATE_REPLICATION_SLOT arch PHYSICAL (RESERVE_WAL 2)").message,
            "reserve_wal requires a Boolean value"
        );
        let e = err("CREATE_REPLICATION_SLOT arch PHYSICAL (FOO)");
        assert_eq!((e.code.as_str(), e.message.as_str()), ("XX000", "unrecognized option: foo"));
        assert_eq!(
            err("CREATE_REPLICATION_SLOT s LOGICAL p (SNAPSHOT 'x')").message,
            "unrecognized value for CREATE_REPLICATION_SLOT option \"snapshot\": \"x\""
        );
        assert_eq!(
            err("CREATE_REPLICATION_SLOT s LOGICAL p (SNAPSHOT)").message,
            "snapshot requires a parameter"
        );
        let e = err("CREATE_REPLICATION_SLOT \"Arch\" PHYSICAL");
        assert_eq!(e.message, "replication slot name \"Arch\" contains invalid character");
        assert_eq!(
            err("CREATE_REPLICATION_SLOT \"\" PHYSICAL").message,
            "replication slot name \"\" is too short"
        );
        assert_eq!(err("CREATE_REPLICATION_SLOT arch PHYSICAL ()").message, "syntax error");
    }

    #[test]
    fn refused_commands_are_recognised() {
        assert_eq!(cmd("BASE_BACKUP (LABEL 'x', PROGRESS)").refusal().unwrap().code, "0A000");
        assert_eq!(cmd("BASE_BACKUP LABEL 'x' PROGRESS FAST WAL NOWAIT").tag(), "BASE_BACKUP");
        assert_eq!(
            cmd("UPLOAD_MANIFEST").refusal().unwrap().message,
            "walkeeper does not serve UPLOAD_MANIFEST"
        );
        let logical =
            cmd("START_REPLICATION SLOT \"sub\" LOGICAL 0/0 (proto_version '4', publication_names '\"p\"')");
        assert_eq!(logical, Command::StartLogicalReplication { slot: "sub".into() });
        assert_eq!(logical.refusal().unwrap().message, "logical decoding requires a database connection");
        let alter = cmd("ALTER_REPLICATION_SLOT sub ( FAILOVER true, TWO_PHASE false );");
        assert_eq!(alter.refusal().unwrap().message, "replication slot \"sub\" does not exist");
        assert!(cmd("IDENTIFY_SYSTEM").refusal().is_none());
    }

    #[test]
    fn sql_is_decided_by_the_first_token() {
        assert_eq!(sql(SECURE_SEARCH_PATH_SQL), Sql::SecureSearchPath);
        assert_eq!(sql("SELECT 1"), Sql::Other);
        assert_eq!(sql("identify_system"), Sql::Other, "keywords are upper case only");
        assert_eq!(sql(""), Sql::Other);
        assert_eq!(sql(";"), Sql::Other);
        assert_eq!(sql("TIMELINE 1"), Sql::Other, "a keyword that starts no command");
        // The first token is still scanned: an unterminated quote fails as in PostgreSQL.
        assert_eq!(err("'abc").message, "unterminated quoted string");
        assert_eq!(err("\"abc").code, "42601");
    }

    #[test]
    fn syntax_errors_as_postgresql_reports_them() {
        for q in [
            "IDENTIFY_SYSTEM x",
            "IDENTIFY_SYSTEM;;",
            "IDENTIFY_SYSTEM; IDENTIFY_SYSTEM",
            "SHOW",
            "SHOW TIMELINE",
            "SHOW a.",
            "TIMELINE_HISTORY",
            "TIMELINE_HISTORY x",
            "START_REPLICATION",
            "START_REPLICATION PHYSICAL",
            "START_REPLICATION 0/1 TIMELINE",
            "START_REPLICATION LOGICAL 0/1",
            "START_REPLICATION SLOT 0/1",
            "DROP_REPLICATION_SLOT",
            "DROP_REPLICATION_SLOT s NOWAIT",
            "CREATE_REPLICATION_SLOT s",
            "CREATE_REPLICATION_SLOT s TEMPORARY",
            "READ_REPLICATION_SLOT 'x'",
            "IDENTIFY_SYSTEM \"a\"\"b\"",
        ] {
            let e = err(q);
            assert_eq!((e.code.as_str(), e.message.as_str()), ("42601", "syntax error"), "{q}");
        }
        assert_eq!(err("TIMELINE_HISTORY 0").message, "invalid timeline 0");
        assert_eq!(err("TIMELINE_HISTORY 4294967296").message, "invalid timeline 0");
        assert_eq!(err("START_REPLICATION 0/1 TIMELINE 0").message, "invalid timeline 0");
        assert_eq!(err("START_REPLICATION 1FFFFFFFF/0").message, "invalid streaming start location");
        assert_eq!(err("SHOW 'a").message, "unterminated quoted string");
    }

    #[test]
    fn scanner_details() {
        // Leading zeros do not count towards the 8 digits; `12AB/34` is one LSN, not 12 then AB.
        assert_eq!(
            cmd("START_REPLICATION 000000001/00000000A").clone(),
            Command::StartReplication { slot: None, start: Lsn(0x1_0000_000A), timeline: None }
        );
        assert_eq!(
            cmd("START_REPLICATION 12AB/34"),
            Command::StartReplication { slot: None, start: Lsn(0x12AB_0000_0034), timeline: None }
        );
        assert_eq!(strtoul_u32(b"99999999999999999999999"), u32::MAX);
        assert_eq!(strtoul_u32(b"4294967297"), 1);
        // Whitespace of every kind separates tokens.
        assert_eq!(cmd("TIMELINE_HISTORY\t\n\r\x0b\x0c7"), Command::TimelineHistory { timeline: 7 });
        // A doubled quote in a string, high-bit bytes in identifiers.
        assert_eq!(
            err("CREATE_REPLICATION_SLOT s LOGICAL p (SNAPSHOT 'n''x')").message,
            "unrecognized value for CREATE_REPLICATION_SLOT option \"snapshot\": \"n'x\""
        );
        assert_eq!(cmd("SHOW caf\u{e9}"), Command::Show { name: "caf\u{e9}".into() });
    }

    #[test]
    fn long_identifiers_are_truncated_with_a_notice() {
        let long = "a".repeat(70);
        let p = parse(format!("DROP_REPLICATION_SLOT {long}").as_bytes()).unwrap();
        assert_eq!(
            p.statement,
            Statement::Command(Command::DropReplicationSlot { slot: "a".repeat(63), wait: false })
        );
        assert_eq!(p.notices.len(), 1);
        assert_eq!(p.notices[0].severity, "NOTICE");
        assert_eq!(p.notices[0].code, "42622");
        assert_eq!(
            p.notices[0].message,
            format!("identifier \"{long}\" will be truncated to \"{}\"", "a".repeat(63))
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = parse(&data);
        }

        #[test]
        fn token_soup_never_panics(words in proptest::collection::vec(prop_oneof![
            Just("START_REPLICATION"), Just("SLOT"), Just("PHYSICAL"), Just("LOGICAL"), Just("TIMELINE"),
            Just("CREATE_REPLICATION_SLOT"), Just("("), Just(")"), Just(","), Just(";"), Just("'x'"), Just("\""),
            Just("0/1"), Just("7"), Just("RESERVE_WAL"), Just("s"), Just("SHOW"), Just("."), Just("BASE_BACKUP"),
        ], 0..12)) {
            let _ = parse(words.join(" ").as_bytes());
        }

        #[test]
        fn any_lsn_round_trips(lsn in any::<u64>(), pad in any::<bool>()) {
            let text = if pad { format!("{:X}/{:08X}", lsn >> 32, lsn as u32) } else { super::super::lsn_text(Lsn(lsn)) };
            prop_assert_eq!(
                cmd(&format!("START_REPLICATION {text} TIMELINE 1")),
                Command::StartReplication { slot: None, start: Lsn(lsn), timeline: Some(1) }
            );
        }
    }
}
