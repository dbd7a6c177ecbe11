//! The processes a test starts (the daemon, rsyslogd, Prometheus, a CLI
//! being fed or followed, ...): each is held by a [`ChildGuard`], so none
//! outlives its test, also when the test fails half-way.

use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

/// A child process that is killed (SIGKILL) and reaped when the guard is
/// dropped, unless it has exited and been waited for already. It derefs
/// to the [`Child`] (`id`, `stdout`, `try_wait`, `wait`, ...).
pub struct ChildGuard {
    /// `None` once [`ChildGuard::wait_with_output`] took it.
    child: Option<Child>,
}

impl ChildGuard {
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard { child: Some(child) }
    }

    /// Spawns `cmd` under a guard.
    pub fn spawn(cmd: &mut Command) -> std::io::Result<ChildGuard> {
        cmd.spawn().map(ChildGuard::new)
    }

    /// Sends `sig`, unless the process has been reaped (its pid may
    /// belong to another process by now).
    pub fn signal(&mut self, sig: Signal) {
        if matches!(self.try_wait(), Ok(None)) {
            let pid = nix::unistd::Pid::from_raw(self.id() as i32);
            let _ = nix::sys::signal::kill(pid, sig);
        }
    }

    /// Its exit status once it exits, or `None` if it still runs after
    /// `within`.
    pub fn wait_timeout(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A graceful stop: SIGTERM, up to `grace` for it to exit, then
    /// SIGKILL. Its exit status, or `None` if it had to be killed.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.signal(Signal::SIGTERM);
        let status = self.wait_timeout(grace);
        if status.is_none() {
            let _ = self.kill();
            let _ = self.wait();
        }
        status
    }

    /// Closes its stdin, waits for it to exit and collects its stdout and
    /// stderr (those that were piped).
    pub fn wait_with_output(mut self) -> Output {
        let child = self.child.take().expect("a child not yet waited for");
        child.wait_with_output().unwrap()
    }
}

impl Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.child.as_ref().expect("a child not yet waited for")
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("a child not yet waited for")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Nothing to do for one already reaped: std knows its status
            // and signals no recycled pid.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `cmd` with `input` on its stdin and stdout and stderr piped; its
/// output once it exits (`Err` only if it could not be started). The input
/// is written from a thread (a child that writes much before it reads
/// cannot block the test) and a child that exits without reading it all is
/// no error here.
pub fn output_with_stdin(cmd: &mut Command, input: &[u8]) -> std::io::Result<Output> {
    use std::io::Write;
    let mut child = ChildGuard::spawn(
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )?;
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output();
    feeder.join().unwrap();
    Ok(out)
}
