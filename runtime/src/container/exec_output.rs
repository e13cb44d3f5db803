//! The output of an exec'd process (health checks), read through FIFOs to the end before the
//! exec is deleted.
//!
//! Why not `file://` URIs: with them containerd 1.6's shim writes both streams into the file
//! itself, and a line written to stderr just before exit was sometimes missing from the file
//! after the exec had been waited for and deleted (seen in CI, even with the two streams given
//! as two spellings of the path). With FIFOs the shim's copiers write to us, and each closes its
//! FIFO only when it has copied everything: reading both to end of file is proof that no output
//! is still on its way.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::ContainerError;

/// Most bytes kept per stream (the rest is read and dropped, so the process never blocks).
const MAX_BYTES: usize = 64 * 1024;

/// FIFOs for one exec's stdout and stderr, and the readers draining them.
pub(crate) struct ExecOutput {
    output: PathBuf,
    fifos: [PathBuf; 2],
    readers: Vec<JoinHandle<std::io::Result<Vec<u8>>>>,
}

impl ExecOutput {
    /// Make the two FIFOs beside `output` and start reading them.
    pub(crate) fn create(output: &Path, exec_id: &str) -> Result<Self, ContainerError> {
        let dir = output.parent().unwrap_or(Path::new("."));
        let name = output
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let fifos =
            ["stdout", "stderr"].map(|stream| dir.join(format!(".{name}.{exec_id}.{stream}")));
        std::fs::create_dir_all(dir).map_err(|source| ContainerError::Io {
            path: dir.to_owned(),
            source,
        })?;
        for fifo in &fifos {
            mkfifo(fifo).map_err(|source| ContainerError::Io {
                path: fifo.clone(),
                source,
            })?;
        }
        let readers = fifos
            .iter()
            .map(|fifo| {
                let fifo = fifo.clone();
                // A blocking open: it returns when the shim opens the write end.
                tokio::task::spawn_blocking(move || drain(&fifo))
            })
            .collect();
        Ok(Self {
            output: output.to_owned(),
            fifos,
            readers,
        })
    }

    /// What to give containerd as the exec's stdout.
    pub(crate) fn stdout(&self) -> String {
        self.fifos[0].display().to_string()
    }

    /// What to give containerd as the exec's stderr.
    pub(crate) fn stderr(&self) -> String {
        self.fifos[1].display().to_string()
    }

    /// Wait up to `within` for both streams to end, append what they carried (stdout, then
    /// stderr) to the output file and remove the FIFOs. A stream still open after that (a
    /// background child keeps it) is cut off: its reader finishes when the writer goes away.
    pub(crate) async fn finish(mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        let mut text = Vec::new();
        let readers = std::mem::take(&mut self.readers);
        for (mut reader, fifo) in readers.into_iter().zip(&self.fifos) {
            let read = match tokio::time::timeout_at(deadline, &mut reader).await {
                Ok(read) => read,
                Err(_) => {
                    // Never opened by the shim (the exec failed to start): open the write end
                    // ourselves so the blocked open returns and reads end of file.
                    release(fifo);
                    match tokio::time::timeout(Duration::from_millis(200), reader).await {
                        Ok(read) => read,
                        Err(_) => {
                            tracing::debug!(fifo = %fifo.display(), "exec output still open; cut off");
                            continue;
                        }
                    }
                }
            };
            match read {
                Ok(Ok(bytes)) => text.extend(bytes),
                Ok(Err(e)) => {
                    tracing::debug!(fifo = %fifo.display(), error = %e, "exec output unreadable")
                }
                Err(e) => tracing::debug!(error = %e, "exec output reader failed"),
            }
        }
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.output)
            .and_then(|mut f| f.write_all(&text));
        if let Err(e) = appended {
            tracing::debug!(path = %self.output.display(), error = %e, "could not write exec output");
        }
    }
}

impl Drop for ExecOutput {
    /// Also when dropped unfinished (the exec's future was cancelled, e.g. a health check of an
    /// app being stopped): release readers still blocked in open, or each would hold a blocking
    /// thread forever (and a runtime shutting down waits for them), then remove the FIFOs.
    fn drop(&mut self) {
        for (reader, fifo) in self.readers.iter().zip(&self.fifos) {
            if !reader.is_finished() {
                release(fifo);
            }
        }
        for fifo in &self.fifos {
            let _ = std::fs::remove_file(fifo);
        }
    }
}

fn mkfifo(path: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    rustix::fs::mkfifoat(rustix::fs::CWD, path, rustix::fs::Mode::from(0o600))?;
    Ok(())
}

/// Read a FIFO to its end, keeping at most [`MAX_BYTES`].
fn drain(fifo: &Path) -> std::io::Result<Vec<u8>> {
    let mut file = File::open(fifo)?;
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(kept);
        }
        let room = MAX_BYTES.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
}

/// Open and close the write end without blocking, so a reader blocked in open returns.
fn release(fifo: &Path) {
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(fifo);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_streams_reach_the_output_and_the_fifos_go() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("out");
        let capture = ExecOutput::create(&output, "exec-1").unwrap();
        let (out, err) = (capture.stdout(), capture.stderr());
        // A writer like the shim: opens each FIFO, writes, closes.
        let writer = std::thread::spawn(move || {
            File::options()
                .write(true)
                .open(&out)
                .unwrap()
                .write_all(b"to-stdout\n")
                .unwrap();
            File::options()
                .write(true)
                .open(&err)
                .unwrap()
                .write_all(b"to-stderr\n")
                .unwrap();
        });
        capture.finish(Duration::from_secs(5)).await;
        writer.join().unwrap();
        assert_eq!(
            std::fs::read_to_string(&output).unwrap(),
            "to-stdout\nto-stderr\n"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("out")]);
    }

    #[tokio::test]
    async fn dropped_unfinished_it_releases_its_readers_and_removes_the_fifos() {
        let dir = tempfile::tempdir().unwrap();
        let capture = ExecOutput::create(&dir.path().join("out"), "exec-3").unwrap();
        // Let both readers block in open, as they do until the shim opens the write ends.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let readers: Vec<_> = capture.readers.iter().map(|r| r.abort_handle()).collect();
        let fifos = capture.fifos.clone();
        drop(capture);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !readers.iter().all(|r| r.is_finished()) {
            if std::time::Instant::now() > deadline {
                // Unblock them here, or the test runtime would wait for them instead of failing.
                fifos.iter().for_each(|f| release(f));
                panic!("a reader was still blocked on its FIFO after the drop");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    #[tokio::test]
    async fn never_opened_fifos_do_not_hang() {
        let dir = tempfile::tempdir().unwrap();
        // Its directory does not exist yet: it is made.
        let output = dir.path().join("run").join("out");
        let capture = ExecOutput::create(&output, "exec-2").unwrap();
        let started = std::time::Instant::now();
        capture.finish(Duration::from_millis(100)).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(std::fs::read_to_string(&output).unwrap(), "");
    }
}
