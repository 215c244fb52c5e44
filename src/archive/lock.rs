//! One writer per archive (DESIGN.md invariant 6): `receive` and `cleanup` hold an exclusive `flock(2)` on
//! `.walkeeper.lock` in the archive directory, taken before they connect to any server and held until they
//! exit. A second writer is refused at once with one line naming the holder, whose PID and command line the
//! lock file holds. Readers (`restore`, `verify`, `status`, a `cleanup --dry-run`) never lock: they never
//! wait for a writer and never stop one.
//!
//! Why `flock`: the kernel releases the lock when its holder dies, however it dies (kill -9, OOM killer,
//! power loss), so a stale lock never needs cleaning up and the file's presence means nothing: only the
//! lock on it counts. It also works across NFS clients (Linux turns it into a POSIX lock there). The file
//! is never removed: removing it would let a second writer lock a new file while the first still holds the
//! old one.
//!
//! Nothing here is fsynced: the lock lives in the kernel, not on disk, and the holder's name is only read
//! while its process is alive to hold the lock. On a clean exit the name is cleared before the lock goes.

use super::error::WalDirError;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Name of the lock file in the archive directory (not a WAL file name: every reader ignores it).
pub const LOCK_FILE: &str = ".walkeeper.lock";

/// The holder's name is read up to this many bytes; the command line written is cut to fit.
const MAX_HOLDER: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error("archive \"{}\" is in use by another walkeeper ({holder})", dir.display())]
    InUse { dir: PathBuf, holder: String },
    #[error(transparent)]
    Io(WalDirError),
}

/// The exclusive lock on an archive directory, held until dropped (or the process ends).
#[derive(Debug)]
pub struct ArchiveLock {
    file: File,
}

impl ArchiveLock {
    /// Lock the archive `dir` for this process, or say who holds it.
    pub fn acquire(dir: &Path) -> Result<ArchiveLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |op, e| LockError::Io(WalDirError::io(op, &path, e));
        // Never through a symbolic link: the file is truncated and written below.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| io("open lock file", e))?;
        loop {
            // SAFETY: flock on a descriptor we own, integer arguments only.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => {
                    return Err(LockError::InUse { dir: dir.to_path_buf(), holder: holder(&file) })
                }
                _ => return Err(io("lock", e)),
            }
        }
        let mut name = format!("{}\n{}", std::process::id(), command_line(std::env::args_os()));
        if name.len() >= MAX_HOLDER {
            let cut = (0..MAX_HOLDER - 4).rev().find(|&i| name.is_char_boundary(i)).unwrap_or(0);
            name.truncate(cut);
            name.push_str("...");
        }
        name.push('\n');
        file.set_len(0).map_err(|e| io("truncate", e))?;
        file.write_all_at(name.as_bytes(), 0).map_err(|e| io("write", e))?;
        Ok(ArchiveLock { file })
    }
}

/// Whether another process writes to `dir`, asked without creating anything (the service checks every
/// directory of a configuration before it locks any): `Err(InUse)` naming the holder. A shared lock is
/// taken and dropped at once; it conflicts only with a writer's exclusive one. This process's own locks
/// conflict too, so ask only about directories it does not hold.
pub fn check_unlocked(dir: &Path) -> Result<(), LockError> {
    let path = dir.join(LOCK_FILE);
    let file = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(LockError::Io(WalDirError::io("open lock file", &path, e))),
    };
    loop {
        // SAFETY: flock on a descriptor we own, integer arguments only. Closing the file releases it.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => {
                return Err(LockError::InUse { dir: dir.to_path_buf(), holder: holder(&file) })
            }
            _ => return Err(LockError::Io(WalDirError::io("lock", &path, e))),
        }
    }
}

impl Drop for ArchiveLock {
    fn drop(&mut self) {
        // Clear the name while still holding the lock; closing the file then releases it.
        let _ = self.file.set_len(0);
    }
}

/// `pid N: COMMAND` from the lock file's contents, as the holder wrote them.
fn holder(file: &File) -> String {
    let mut buf = vec![0u8; MAX_HOLDER];
    let len = file.read_at(&mut buf, 0).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..len]);
    let mut lines = text.lines();
    match (lines.next().and_then(|pid| pid.trim().parse::<u32>().ok()), lines.next()) {
        (Some(pid), Some(cmd)) => format!("pid {pid}: {cmd}"),
        (Some(pid), None) => format!("pid {pid}"),
        _ => "it has not recorded its process id yet".to_string(),
    }
}

/// The command line, on one line, shell-quoted where needed, passwords masked; the program by its file name.
fn command_line(args: impl Iterator<Item = std::ffi::OsString>) -> String {
    let words: Vec<String> = args
        .enumerate()
        .map(|(i, arg)| {
            let arg = arg.to_string_lossy().into_owned();
            let arg = if i == 0 {
                Path::new(&arg).file_name().map_or(arg.clone(), |n| n.to_string_lossy().into_owned())
            } else {
                arg
            };
            quote(&mask_passwords(&arg))
        })
        .collect();
    words.join(" ")
}

/// Quote a word that is empty or holds white space, quotes or control characters (which become spaces).
fn quote(word: &str) -> String {
    let clean: String = word.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if !clean.is_empty() && !clean.chars().any(|c| c.is_whitespace() || c == '\'' || c == '"') {
        return clean;
    }
    format!("'{}'", clean.replace('\'', "'\\''"))
}

/// Mask the password of a connection string or URI: `password=…` (to the end of the word, or of a quoted
/// value) and `://user:…@`.
fn mask_passwords(arg: &str) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(at) = rest.find("password=") {
        let (before, after) = rest.split_at(at + "password=".len());
        out.push_str(before);
        out.push_str("***");
        let end = match after.strip_prefix('\'') {
            Some(quoted) => quoted.find('\'').map_or(after.len(), |q| q + 2),
            None => after.find(|c: char| c.is_whitespace() || c == '&').unwrap_or(after.len()),
        };
        rest = &after[end..];
    }
    out.push_str(rest);
    if let Some(scheme_end) = out.find("://") {
        let authority_start = scheme_end + 3;
        let authority_end =
            out[authority_start..].find(['/', '?']).map_or(out.len(), |i| authority_start + i);
        if let Some(at) = out[authority_start..authority_end].rfind('@') {
            let userinfo = &out[authority_start..authority_start + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(authority_start + colon + 1..authority_start + at, "***");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn second_lock_is_refused_naming_the_holder_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = ArchiveLock::acquire(dir.path()).unwrap();
        let written = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert!(written.starts_with(&format!("{}\n", std::process::id())), "{written:?}");
        // flock locks belong to the open file: a second open in this process conflicts like another process.
        let err = ArchiveLock::acquire(dir.path()).unwrap_err().to_string();
        let expected = format!(
            "archive \"{}\" is in use by another walkeeper (pid {}: ",
            dir.path().display(),
            std::process::id()
        );
        assert!(err.starts_with(&expected), "{err}");
        assert!(!err.contains('\n'), "{err}");
        drop(first);
        assert_eq!(std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap(), "");
        let _again = ArchiveLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn check_unlocked_names_the_holder_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        check_unlocked(dir.path()).unwrap();
        assert!(!dir.path().join(LOCK_FILE).exists(), "nothing created");
        let held = ArchiveLock::acquire(dir.path()).unwrap();
        let err = check_unlocked(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&format!("(pid {}: ", std::process::id())), "{err}");
        drop(held);
        check_unlocked(dir.path()).unwrap();
        let _again = ArchiveLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn holder_not_recorded_yet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        let held = File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        // SAFETY: flock on our own descriptor.
        assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
        let err = ArchiveLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.ends_with("(it has not recorded its process id yet)"), "{err}");
    }

    #[test]
    fn lock_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = ArchiveLock::acquire(&missing).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "could not open lock file \"{}\": No such file or directory (os error 2)",
                missing.join(LOCK_FILE).display()
            )
        );
        // A symbolic link in its place is not followed.
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(LOCK_FILE)).unwrap();
        assert!(ArchiveLock::acquire(dir.path()).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }

    #[test]
    fn command_line_is_one_line_with_passwords_masked() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>().into_iter();
        assert_eq!(
            command_line(args(&[
                "/usr/bin/walkeeper",
                "receive",
                "-D",
                "/x y",
                "-d",
                "host=a password=s3cret user=b"
            ])),
            "walkeeper receive -D '/x y' -d 'host=a password=*** user=b'"
        );
        assert_eq!(
            mask_passwords("postgresql://rep:s3cret@db:5432/x?sslmode=require"),
            "postgresql://rep:***@db:5432/x?sslmode=require"
        );
        assert_eq!(
            mask_passwords("postgres://db/x?password=s3cret&user=rep"),
            "postgres://db/x?password=***&user=rep"
        );
        assert_eq!(mask_passwords("password='a b' user=c"), "password=*** user=c");
        assert_eq!(mask_passwords("postgres://rep@db"), "postgres://rep@db");
        assert_eq!(quote("it's\nhere"), "'it'\\''s here'");
        assert_eq!(quote(""), "''");
    }

    proptest::proptest! {
        #[test]
        fn masking_never_panics_and_hides_the_secret(before in "[a-z =:/@]{0,20}", secret in "[A-Z]{6,10}") {
            let masked = mask_passwords(&format!("{before}password={secret}"));
            proptest::prop_assert!(!masked.contains(&secret));
            let _ = mask_passwords(&format!("{before}://u:{secret}@h"));
        }
    }
}
