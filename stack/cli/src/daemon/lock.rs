//! One daemon per interface: an exclusive `flock` on a file named after the
//! interface.
//!
//! The kernel releases the lock when its holder dies, however it dies, so
//! a crashed daemon never blocks the next one. The file records the
//! holder's pid and control socket, which lets a second daemon say who has
//! the interface. The file is removed, while still locked, when the holder
//! stops. A daemon that opened the file just before that removal would
//! lock a file no longer in the directory, so after locking, the holder
//! checks that the path still names the file it locked and starts over if
//! it does not.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

use hoststack_stack::error::{StackError, StackResult};

/// Where interface locks live (shared by every daemon on the machine,
/// whatever its runtime directory).
pub(crate) const LOCK_DIR: &str = "/run/hoststack/locks";

/// A held interface lock; released (and its file removed) on drop.
#[derive(Debug)]
pub(crate) struct InterfaceLock {
    path: PathBuf,
    file: Option<File>,
}

/// The lock file of `interface` in network namespace `netns`.
pub(crate) fn lock_path(dir: &Path, netns: Option<&str>, interface: &str) -> PathBuf {
    dir.join(format!("{}--{interface}.lock", netns.unwrap_or("host")))
}

impl InterfaceLock {
    /// Takes the lock of `interface` or says who holds it. `control` is
    /// recorded for the message a second daemon prints.
    pub(crate) fn acquire(
        dir: &Path,
        netns: Option<&str>,
        interface: &str,
        control: &Path,
    ) -> StackResult<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StackError::os(format!("creating {}", dir.display()), e))?;
        let path = lock_path(dir, netns, interface);
        for _ in 0..8 {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| StackError::os(format!("opening {}", path.display()), e))?;
            if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    String::new()
                } else {
                    format!(" ({holder})")
                };
                return Err(StackError::Socket(format!(
                    "interface {interface} is already served by another hoststack daemon{who}; stop it first"
                )));
            }
            let same = match (file.metadata(), std::fs::metadata(&path)) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            };
            if !same {
                continue;
            }
            file.set_len(0)
                .and_then(|()| {
                    write!(
                        file,
                        "pid {}, control socket {}",
                        std::process::id(),
                        control.display()
                    )
                })
                .map_err(|e| StackError::os(format!("writing {}", path.display()), e))?;
            return Ok(Self {
                path,
                file: Some(file),
            });
        }
        Err(StackError::Config(format!(
            "could not take the lock {} (it keeps being replaced)",
            path.display()
        )))
    }

    /// The lock file.
    #[cfg(test)]
    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for InterfaceLock {
    fn drop(&mut self) {
        // Remove while still holding the lock, then release it.
        let _ = std::fs::remove_file(&self.path);
        self.file.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_an_interface_names_the_holder() {
        let dir = std::env::temp_dir().join(format!("hs-lock-test-{}", std::process::id()));
        let a = InterfaceLock::acquire(&dir, None, "veth9", Path::new("/tmp/a.sock")).unwrap();
        let e = InterfaceLock::acquire(&dir, None, "veth9", Path::new("/tmp/b.sock")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("interface veth9 is already served"), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("/tmp/a.sock"), "{msg}");
        // Another namespace's interface of the same name is another lock.
        let other =
            InterfaceLock::acquire(&dir, Some("lab"), "veth9", Path::new("/tmp/c.sock")).unwrap();
        let path = a.path().to_path_buf();
        drop(a);
        assert!(!path.exists());
        let again = InterfaceLock::acquire(&dir, None, "veth9", Path::new("/tmp/b.sock")).unwrap();
        drop((again, other));
        let _ = std::fs::remove_dir(&dir);
    }
}
