//! The walkeeper binary as the integration tests run it, in one place: its path, a `Command` with a clean
//! environment, and a finished run (exit code, stdout, stderr, the one-line error).
//!
//! ```ignore
//! let r = Run::of(walkeeper().args(["verify", "-D", dir]));
//! assert_eq!(r.code, Some(2), "{r}");
//! assert_eq!(r.error_line(), "walkeeper: error: ...");
//! ```

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Path of the walkeeper binary cargo built for these tests.
pub const WALKEEPER: &str = env!("CARGO_BIN_EXE_walkeeper");

/// `walkeeper` with stdin closed and no libpq (`PG*`) or `RUST_LOG` variables inherited from the developer's
/// shell; add arguments, environment and stdio as needed.
pub fn walkeeper() -> Command {
    let mut cmd = Command::new(WALKEEPER);
    super::clear_pg_env(&mut cmd);
    cmd.env_remove("RUST_LOG").stdin(Stdio::null());
    cmd
}

/// `walkeeper ARGS...` run to completion.
pub fn run_walkeeper(args: &[&str]) -> Run {
    Run::of(walkeeper().args(args))
}

/// A finished run of a command.
#[derive(Debug)]
pub struct Run {
    /// None when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Runs `cmd` to completion, capturing stdout and stderr.
    pub fn of(cmd: &mut Command) -> Run {
        let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs `cmd` to completion, or kills it and panics (with its output) after `timeout`: for commands
    /// whose failure would be to hang.
    pub fn within(cmd: &mut Command, timeout: Duration) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
        let mut child = cmd
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let mut status = None;
        super::wait_until(timeout, || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        let read = |p: &std::path::Path| String::from_utf8_lossy(&fs::read(p).unwrap()).into_owned();
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {timeout:?}: {cmd:?}\n{}\n{}", read(&out), read(&err));
        };
        Run { code: status.code(), stdout: read(&out), stderr: read(&err) }
    }

    /// The single line on stderr (panics when there are more or none): errors are one line.
    pub fn error_line(&self) -> &str {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one stderr line, got:\n{}", self.stderr);
        lines[0]
    }

    /// `key:   value` lines of stdout.
    pub fn facts(&self) -> HashMap<String, String> {
        self.stdout
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    }

    /// The value of a `key: value` line of stdout; panics when there is none.
    pub fn fact(&self, key: &str) -> String {
        self.facts().remove(key).unwrap_or_else(|| panic!("no {key:?} line in:\n{}", self.stdout))
    }
}

/// For assertion messages: the exit code and both outputs.
impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit {:?}\n--- stdout ---\n{}--- stderr ---\n{}", self.code, self.stdout, self.stderr)
    }
}
