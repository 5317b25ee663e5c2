//! Running setup commands (`ip` from iproute2): every command's exit status
//! is checked, and a failure names the full command line and its stderr.

use std::ffi::OsStr;
use std::process::{Command, Stdio};

/// Runs `program args...`, returning its stdout, or a message with the
/// command line, the exit status and stderr.
pub(crate) fn try_run<I, S>(program: &str, args: I) -> Result<String, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    let line = command_line(&cmd);
    let out = cmd
        .output()
        .map_err(|e| format!("`{line}` could not be started: {e} (is {program} installed?)"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Like [`try_run`], but panics on failure: for setup, where a failed step
/// leaves nothing sensible to test.
pub(crate) fn run<I, S>(program: &str, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    try_run(program, args).unwrap_or_else(|e| panic!("{e}"))
}

/// `ip -n <netns> <args...>`, panicking on failure.
pub(crate) fn ip_in(netns: &str, args: &[&str]) -> String {
    run("ip", ["-n", netns].iter().chain(args))
}

/// The command line as a shell user would type it, for error messages.
pub(crate) fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_the_command_and_its_stderr() {
        let err = try_run("sh", ["-c", "echo oops >&2; exit 3"]).unwrap_err();
        assert!(err.contains("`sh -c echo oops >&2; exit 3`"), "{err}");
        assert!(err.contains("oops"), "{err}");
        assert_eq!(try_run("sh", ["-c", "echo hi"]).unwrap(), "hi\n");
    }
}
