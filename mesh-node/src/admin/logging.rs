//! The daemon's log output and its run-time filter: [`init_tracing`] installs the global
//! subscriber (stderr, text or JSON lines) behind a reloadable `EnvFilter`, and
//! [`LogControl`] changes that filter while the daemon runs (`/logging`).
use std::{fmt, io::IsTerminal as _};

use serde_json::{Map, Value};
use tracing::{field::Field, Event, Subscriber};
use tracing_subscriber::{
    field::{RecordFields, Visit},
    fmt::{
        format::Writer,
        time::{FormatTime as _, SystemTime},
        FmtContext, FormatEvent, FormatFields, FormattedFields,
    },
    layer::SubscriberExt as _,
    registry::LookupSpan,
    reload,
    util::SubscriberInitExt as _,
    EnvFilter, Registry,
};

/// The levels `?level=` accepts.
pub const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid log filter {filter:?}: {reason} (expected directives such as \"info\" or \"mesh_node=debug,info\")")]
    InvalidFilter { filter: String, reason: String },
    #[error("unknown log level {0:?}: use one of trace, debug, info, warn, error, off")]
    UnknownLevel(String),
    #[error("the log filter cannot be changed: {0}")]
    Reload(String),
}

/// A handle on the daemon's log filter. Cheap to clone.
#[derive(Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
}

impl fmt::Debug for LogControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogControl")
            .field("filter", &self.current())
            .finish()
    }
}

impl LogControl {
    /// A control over a subscriber that is not installed globally, e.g. for tests: the
    /// subscriber must be kept alive (or installed with `tracing::subscriber::with_default`)
    /// for as long as the control is used.
    pub fn detached(filter: &str) -> Result<(LogControl, impl Subscriber + Send + Sync), LogError> {
        let (layer, handle) = reload::Layer::new(parse(filter)?);
        let subscriber = Registry::default()
            .with(layer)
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink));
        Ok((LogControl { handle }, subscriber))
    }

    /// The filter in force, as directives (`mesh_node=debug,info`).
    pub fn current(&self) -> String {
        self.handle
            .with_current(|f| f.to_string())
            .unwrap_or_else(|_| "(subscriber gone)".into())
    }

    /// Replaces the filter with `directives` (EnvFilter syntax, as `RUST_LOG`).
    pub fn set(&self, directives: &str) -> Result<(), LogError> {
        let filter = parse(directives)?;
        self.handle
            .reload(filter)
            .map_err(|e| LogError::Reload(e.to_string()))
    }

    /// Replaces the filter with one level for everything.
    pub fn set_level(&self, level: &str) -> Result<(), LogError> {
        let level = level.trim().to_ascii_lowercase();
        if !LEVELS.contains(&level.as_str()) {
            return Err(LogError::UnknownLevel(level));
        }
        self.set(&level)
    }
}

fn parse(directives: &str) -> Result<EnvFilter, LogError> {
    let directives = directives.trim();
    if directives.is_empty() {
        return Err(LogError::InvalidFilter {
            filter: directives.into(),
            reason: "empty".into(),
        });
    }
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| LogError::InvalidFilter {
            filter: directives.into(),
            reason: e.to_string(),
        })
}

/// The control of the subscriber [`init_tracing`] installed: kept here so that the daemon
/// finds it without every entry point having to hand it down.
static INSTALLED: std::sync::OnceLock<LogControl> = std::sync::OnceLock::new();

impl LogControl {
    /// The control of the global subscriber, if [`init_tracing`] installed it.
    pub fn installed() -> Option<LogControl> {
        INSTALLED.get().cloned()
    }
}

/// Installs the global subscriber: to stderr, without colours unless stderr is a
/// terminal, as text or one JSON object per line. The filter is `RUST_LOG` when set and
/// valid, else `default_filter` (or `info` if that is invalid too). Returns the control of
/// that filter for `/logging`. If a global subscriber is already installed (tests), it is
/// kept and the returned control changes nothing that is logged.
pub fn init_tracing(default_filter: &str, json: bool) -> LogControl {
    let from_env = std::env::var("RUST_LOG").ok().filter(|s| !s.trim().is_empty());
    let mut problems = Vec::new();
    let filter = match from_env.as_deref().map(parse) {
        Some(Ok(f)) => f,
        other => {
            if let Some(Err(e)) = other {
                problems.push(format!("RUST_LOG ignored: {e}"));
            }
            parse(default_filter).unwrap_or_else(|e| {
                problems.push(format!("default log filter ignored: {e}"));
                EnvFilter::new("info")
            })
        }
    };
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::stderr().is_terminal();
    let installed = if json {
        Registry::default()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(false)
                    .fmt_fields(JsonFields)
                    .event_format(JsonFormat),
            )
            .try_init()
    } else {
        Registry::default()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(ansi),
            )
            .try_init()
    };
    let control = LogControl { handle };
    if installed.is_ok() {
        for problem in problems {
            tracing::warn!("{problem}");
        }
        let _ = INSTALLED.set(control.clone());
    }
    control
}

/// Writes span fields as a JSON object, so that [`JsonFormat`] can merge them.
struct JsonFields;

impl<'w> FormatFields<'w> for JsonFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut map = Map::new();
        fields.record(&mut JsonVisitor(&mut map));
        write!(writer, "{}", Value::Object(map))
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut map = match serde_json::from_str(&current.fields) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        fields.record(&mut JsonVisitor(&mut map));
        current.fields = Value::Object(map).to_string();
        Ok(())
    }
}

/// One JSON object per event: `timestamp`, `level`, `target`, the event's fields
/// (`message` among them) and `spans`, the enclosing spans from the root with their fields.
struct JsonFormat;

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut out = Map::new();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        out.insert("timestamp".into(), timestamp.into());
        out.insert("level".into(), event.metadata().level().as_str().into());
        out.insert("target".into(), event.metadata().target().into());
        event.record(&mut JsonVisitor(&mut out));
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope
                .from_root()
                .map(|span| {
                    let mut entry = Map::new();
                    entry.insert("name".into(), span.name().into());
                    if let Some(fields) = span.extensions().get::<FormattedFields<N>>() {
                        if let Ok(Value::Object(fields)) = serde_json::from_str(&fields.fields) {
                            entry.extend(fields);
                        }
                    }
                    Value::Object(entry)
                })
                .collect();
            out.insert("spans".into(), spans.into());
        }
        writeln!(writer, "{}", Value::Object(out))
    }
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn set_and_reject_filters() {
        let (control, _subscriber) = LogControl::detached("info").unwrap();
        assert_eq!(control.current(), "info");
        control.set("mesh_node=debug,warn").unwrap();
        assert_eq!(control.current(), "mesh_node=debug,warn");
        control.set_level("DEBUG").unwrap();
        assert_eq!(control.current(), "debug");
        let e = control.set("mesh_node=loud").unwrap_err().to_string();
        assert!(e.contains("invalid log filter \"mesh_node=loud\""), "{e}");
        assert!(matches!(
            control.set_level("verbose"),
            Err(LogError::UnknownLevel(_))
        ));
        assert!(control.set(" ").is_err());
        assert_eq!(control.current(), "debug");
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = Registry::default().with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || writer.clone())
                .fmt_fields(JsonFields)
                .event_format(JsonFormat),
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("conn", id = 7u64, peer = tracing::field::Empty);
            let _guard = span.enter();
            span.record("peer", "10.0.0.1:80");
            tracing::info!(bytes = 12u64, ok = true, "closed \"quoted\"");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "closed \"quoted\"");
        assert_eq!(line["bytes"], 12);
        assert_eq!(line["ok"], true);
        assert_eq!(line["spans"][0]["name"], "conn");
        assert_eq!(line["spans"][0]["id"], 7);
        assert_eq!(line["spans"][0]["peer"], "10.0.0.1:80");
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
