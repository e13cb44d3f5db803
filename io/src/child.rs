//! Long-running child processes (QEMU, swtpm, a central under benchmark) that must not outlive
//! the thread that started them, even when it is killed without running any cleanup.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Has the child started by `command` killed (SIGKILL) when the thread that spawns it ends, so a
/// killed test or benchmark never leaves its children running.
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: kept unsafe because std's `pre_exec` is: the closure runs between fork and exec,
    // where only async-signal-safe calls are allowed; it makes one prctl system call (rustix
    // issues it directly, without allocating or locking) and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn a_child_is_killed_when_the_thread_that_started_it_ends() {
        let mut child = std::thread::spawn(|| {
            let mut command = Command::new("sleep");
            command.arg("30");
            die_with_parent(&mut command);
            command.spawn().unwrap()
        })
        .join()
        .unwrap();
        let started = Instant::now();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "{status}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
