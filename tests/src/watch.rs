//! [`LineWatcher`]: follows a child's output line by line on background
//! threads, copies it to a log file, and lets tests wait (woken by a condvar,
//! never by a timer) for the first line that matches.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Output of one or more streams (e.g. a daemon's stdout and stderr
/// together), read line by line. Cheap to clone; clones share the lines.
#[derive(Clone)]
pub struct LineWatcher {
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    log_path: Option<PathBuf>,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    lines: Vec<String>,
    /// Streams not yet at EOF.
    open: usize,
    read_errors: Vec<String>,
}

/// Why a wait ended without a matching line. Its `Display` (and `Debug`, so
/// `unwrap` shows it) includes everything the streams produced.
pub struct WaitError {
    pub kind: WaitErrorKind,
    /// What was waited for, for the message.
    pub wanted: String,
    /// Name of the watched output.
    pub source: String,
    /// All lines collected so far.
    pub output: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitErrorKind {
    Timeout(Duration),
    /// Every stream reached EOF (the child exited or closed its output).
    Ended,
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            WaitErrorKind::Timeout(t) => write!(
                f,
                "timed out after {t:?} waiting for {} in {}",
                self.wanted, self.source
            )?,
            WaitErrorKind::Ended => write!(f, "{} ended before {} appeared", self.source, self.wanted)?,
        }
        write!(f, "; its output:\n{}", self.output)
    }
}

impl fmt::Debug for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for WaitError {}

impl LineWatcher {
    /// Starts one reader thread per stream. Lines of all streams go, in the
    /// order they are read, into one list and (if `log` is given) one file,
    /// which is created or appended to.
    pub fn start(name: impl Into<String>, streams: Vec<Box<dyn Read + Send>>, log: Option<&Path>) -> Self {
        let name = name.into();
        let file = log.map(|p| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap_or_else(|e| panic!("cannot open log {}: {e}", p.display()))
        });
        let shared = Arc::new(Shared {
            name: name.clone(),
            log_path: log.map(Path::to_path_buf),
            state: Mutex::new(State {
                open: streams.len(),
                ..State::default()
            }),
            changed: Condvar::new(),
        });
        let file = file.map(|f| Arc::new(Mutex::new(f)));
        for (i, stream) in streams.into_iter().enumerate() {
            let shared = shared.clone();
            let file = file.clone();
            std::thread::Builder::new()
                .name(format!("watch-{name}-{i}"))
                .spawn(move || read_lines(&shared, stream, file.as_deref()))
                .expect("cannot spawn a line watcher thread");
        }
        LineWatcher { shared }
    }

    /// Watches a single stream.
    pub fn watch(name: impl Into<String>, stream: impl Read + Send + 'static, log: Option<&Path>) -> Self {
        Self::start(name, vec![Box::new(stream)], log)
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The log file the lines are copied to, if any.
    pub fn log_path(&self) -> Option<&Path> {
        self.shared.log_path.as_deref()
    }

    /// Waits for the first line (from the start of the output) for which
    /// `pred` holds, and returns it.
    pub fn wait_for_line(
        &self,
        pred: impl FnMut(&str) -> bool,
        timeout: Duration,
    ) -> Result<String, WaitError> {
        self.wait_from(0, "a matching line", pred, timeout)
            .map(|(_, l)| l)
    }

    /// Waits for the first line containing `needle`, and returns it.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String, WaitError> {
        self.wait_from(0, &format!("{needle:?}"), |l| l.contains(needle), timeout)
            .map(|(_, l)| l)
    }

    /// Like [`wait_for_line`](Self::wait_for_line), but only considers lines
    /// with index `from` or later (see [`line_count`](Self::line_count)),
    /// so a test can wait for something that happens after a given point.
    /// Returns the matching line's index too.
    pub fn wait_for_line_from(
        &self,
        from: usize,
        pred: impl FnMut(&str) -> bool,
        timeout: Duration,
    ) -> Result<(usize, String), WaitError> {
        self.wait_from(from, "a matching line", pred, timeout)
    }

    fn wait_from(
        &self,
        from: usize,
        wanted: &str,
        mut pred: impl FnMut(&str) -> bool,
        timeout: Duration,
    ) -> Result<(usize, String), WaitError> {
        let deadline = Instant::now() + timeout;
        let mut next = from;
        let mut state = self.lock();
        loop {
            while next < state.lines.len() {
                if pred(&state.lines[next]) {
                    return Ok((next, state.lines[next].clone()));
                }
                next += 1;
            }
            let kind = if state.open == 0 {
                WaitErrorKind::Ended
            } else {
                let left = deadline.saturating_duration_since(Instant::now());
                if !left.is_zero() {
                    state = self
                        .shared
                        .changed
                        .wait_timeout(state, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    continue;
                }
                WaitErrorKind::Timeout(timeout)
            };
            return Err(self.error(kind, wanted, &state));
        }
    }

    /// Waits until every stream has reached EOF.
    pub fn wait_eof(&self, timeout: Duration) -> Result<(), WaitError> {
        let state = self.lock();
        let (state, _) = self
            .shared
            .changed
            .wait_timeout_while(state, timeout, |s| s.open > 0)
            .unwrap_or_else(|e| e.into_inner());
        if state.open == 0 {
            Ok(())
        } else {
            Err(self.error(WaitErrorKind::Timeout(timeout), "end of output", &state))
        }
    }

    pub fn is_eof(&self) -> bool {
        self.lock().open == 0
    }

    /// Number of lines collected so far.
    pub fn line_count(&self) -> usize {
        self.lock().lines.len()
    }

    /// Lines collected so far.
    pub fn lines(&self) -> Vec<String> {
        self.lock().lines.clone()
    }

    /// Text collected so far, one `\n` after each line.
    pub fn text(&self) -> String {
        join_lines(&self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn error(&self, kind: WaitErrorKind, wanted: &str, state: &State) -> WaitError {
        WaitError {
            kind,
            wanted: wanted.to_string(),
            source: self.shared.name.clone(),
            output: join_lines(state),
        }
    }
}

impl fmt::Debug for LineWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LineWatcher")
            .field("name", &self.shared.name)
            .field("log_path", &self.shared.log_path)
            .finish_non_exhaustive()
    }
}

fn join_lines(state: &State) -> String {
    let mut text = String::new();
    for line in &state.lines {
        text.push_str(line);
        text.push('\n');
    }
    for e in &state.read_errors {
        text.push_str(&format!("[read error: {e}]\n"));
    }
    text
}

fn read_lines(shared: &Shared, stream: Box<dyn Read + Send>, log: Option<&Mutex<File>>) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {
                if let Some(file) = log {
                    let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = file.write_all(&buf);
                    if buf.last() != Some(&b'\n') {
                        let _ = file.write_all(b"\n");
                    }
                }
                while matches!(buf.last(), Some(b'\n' | b'\r')) {
                    buf.pop();
                }
                let line = String::from_utf8_lossy(&buf).into_owned();
                shared
                    .state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .lines
                    .push(line);
                shared.changed.notify_all();
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
                state.read_errors.push(e.to_string());
                break;
            }
        }
    }
    shared.state.lock().unwrap_or_else(|e| e.into_inner()).open -= 1;
    shared.changed.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::os::unix::net::UnixStream;

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn finds_a_line_that_is_already_there_and_one_that_comes_later() {
        let (mut tx, rx) = UnixStream::pair().unwrap();
        let dir = std::env::temp_dir().join(format!("mesh-watch-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("out.log");
        let w = LineWatcher::watch("test", rx, Some(&log));
        tx.write_all(b"starting\r\nlistening 1.2.3.4:5\n").unwrap();
        assert_eq!(w.wait_for("listening", T).unwrap(), "listening 1.2.3.4:5");
        let from = w.line_count();
        let waiter = {
            let w = w.clone();
            std::thread::spawn(move || w.wait_for_line_from(from, |l| l.starts_with("ready"), T))
        };
        tx.write_all(b"ready now\n").unwrap();
        assert_eq!(waiter.join().unwrap().unwrap(), (2, "ready now".to_string()));
        drop(tx);
        w.wait_eof(T).unwrap();
        assert_eq!(w.text(), "starting\nlistening 1.2.3.4:5\nready now\n");
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "starting\r\nlistening 1.2.3.4:5\nready now\n"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn end_of_output_before_a_match_is_an_error_with_the_output() {
        let w = LineWatcher::watch("child", Cursor::new(b"one\ntwo".to_vec()), None);
        let err = w.wait_for("three", T).unwrap_err();
        assert_eq!(err.kind, WaitErrorKind::Ended);
        assert_eq!(err.output, "one\ntwo\n");
        assert!(err.to_string().contains("child ended before \"three\""), "{err}");
    }

    #[test]
    fn times_out_when_nothing_matches() {
        let (_tx, rx) = UnixStream::pair().unwrap();
        let w = LineWatcher::watch("quiet", rx, None);
        let err = w.wait_for("x", Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err.kind, WaitErrorKind::Timeout(_)));
    }

    #[test]
    fn several_streams_end_when_all_end() {
        let w = LineWatcher::start(
            "both",
            vec![
                Box::new(Cursor::new(b"a\n".to_vec())),
                Box::new(Cursor::new(b"b\n".to_vec())),
            ],
            None,
        );
        w.wait_eof(T).unwrap();
        let mut lines = w.lines();
        lines.sort();
        assert_eq!(lines, ["a", "b"]);
    }
}
