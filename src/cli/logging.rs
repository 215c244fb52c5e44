//! Log output: pg_receivewal's stderr style (`prog: message`, `prog: error: message`) by default, or one
//! JSON object per line for log shippers. `-v` shows progress messages, `-v -v` debug detail.

use std::fmt;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `prog: [level: ]message key=value...` like PostgreSQL's frontend programs.
struct PgStyle {
    prog: &'static str,
}

impl<S, N> FormatEvent<S, N> for PgStyle
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        write!(w, "{}: ", self.prog)?;
        match *event.metadata().level() {
            Level::ERROR => write!(w, "error: ")?,
            Level::WARN => write!(w, "warning: ")?,
            Level::DEBUG | Level::TRACE => write!(w, "debug: ")?,
            Level::INFO => {}
        }
        // Text lines carry the message only; structured fields are for the JSON format.
        let mut message = MessageOnly(String::new());
        event.record(&mut message);
        let _ = ctx;
        writeln!(w, "{}", message.0)
    }
}

struct MessageOnly(String);

impl tracing::field::Visit for MessageOnly {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            // The message field is the `format_args!` of the log call, whose Debug output is its text.
            self.0 = format!("{value:?}");
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        }
    }
}

/// Install the global subscriber. Verbosity 0 shows warnings and errors, 1 adds info, 2+ debug.
pub fn init(prog: &'static str, format: LogFormat, verbose: u8) {
    let level = match verbose {
        0 => Level::WARN,
        1 => Level::INFO,
        _ => Level::DEBUG,
    };
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_max_level(level);
    let _ = match format {
        LogFormat::Text => builder.event_format(PgStyle { prog }).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
}
