//! Log output: pg_receivewal's stderr style (`prog: message`, `prog: error: message`) by default, or one
//! JSON object per line for log shippers. `-v` shows progress messages, `-v -v` debug detail. In the
//! service, a source's lines name it: `walkeeper: [main] error: …`, or a `span.source` field in JSON.

use std::fmt;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
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
        // In the service, each source's lines carry its name (its runner's `source` span).
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root().filter(|s| s.name() == "source") {
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>() {
                    if let Some(name) = fields.fields.strip_prefix("source=") {
                        write!(w, "[{name}] ")?;
                    }
                }
            }
        }
        match *event.metadata().level() {
            Level::ERROR => write!(w, "error: ")?,
            Level::WARN => write!(w, "warning: ")?,
            Level::DEBUG | Level::TRACE => write!(w, "debug: ")?,
            Level::INFO => {}
        }
        // Text lines carry the message only; structured fields are for the JSON format.
        let mut message = MessageOnly(String::new());
        event.record(&mut message);
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
    // No ANSI colours: span fields (a source's name) are kept as plain `key=value` text.
    let builder =
        tracing_subscriber::fmt().with_writer(std::io::stderr).with_max_level(level).with_ansi(false);
    let _ = match format {
        LogFormat::Text => builder.event_format(PgStyle { prog }).try_init(),
        // A service source's lines carry `"span":{"source":NAME,…}`; nothing else logs in a span.
        LogFormat::Json => {
            builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init()
        }
    };
}
