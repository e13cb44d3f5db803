//! Every external tool (mmdebstrap, mksquashfs, veritysetup, objcopy, sbsign, mtools, sfdisk,
//! zstd, bmaptool, openssl, qemu-img, ...) runs through [`cairn_io::Tool`]: the command line
//! logged, stdout and stderr captured, a timeout that kills its process group, and the end of
//! stderr in the error. This module adds what image builds need on top: [`tool`] (whose
//! not-installed error points at dev/image-packages.txt), a frozen clock (libfaketime) for tools
//! that stamp the current time into their output ([`FrozenClock`]), and [`is_installed`].

use std::path::Path;

pub use cairn_io::{Tool, ToolError, ToolOutput};

/// libfaketime's preload library (Debian package `faketime`).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Clock freezing was asked for but libfaketime is missing: nothing was run.
#[derive(Debug, thiserror::Error)]
#[error("libfaketime is missing ({LIBFAKETIME}): install the `faketime` package")]
pub struct NoFaketime;

/// A command for `program` with a 10 minute timeout.
pub fn tool(program: &str) -> Tool {
    Tool::new(program).install_hint("install the packages in dev/image-packages.txt")
}

/// Runs a [`Tool`] with the wall clock frozen.
pub trait FrozenClock: Sized {
    /// Run with the wall clock frozen at `epoch` (UTC seconds) through libfaketime, for tools
    /// that write the current time into their output (signing time in PKCS#7/CMS, FAT
    /// timestamps).
    ///
    /// # Errors
    /// [`NoFaketime`] when libfaketime is not installed (the tool would run with the real clock).
    fn frozen_clock(self, epoch: i64) -> Result<Self, NoFaketime>;
}

impl FrozenClock for Tool {
    fn frozen_clock(self, epoch: i64) -> Result<Tool, NoFaketime> {
        if !Path::new(LIBFAKETIME).exists() {
            return Err(NoFaketime);
        }
        Ok(self
            .env("LD_PRELOAD", LIBFAKETIME)
            .env("FAKETIME", format_utc(epoch))
            .env("FAKETIME_DONT_RESET", "1")
            .env("TZ", "UTC"))
    }
}

/// Whether `program` can be found on PATH.
pub fn is_installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// `epoch` as `YYYY-MM-DD hh:mm:ss` (UTC), the absolute time format libfaketime reads.
pub fn format_utc(epoch: i64) -> String {
    let days = epoch.div_euclid(86_400);
    let secs = epoch.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_epochs_as_utc() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(1_735_689_600), "2025-01-01 00:00:00");
        assert_eq!(format_utc(951_827_696), "2000-02-29 12:34:56");
    }

    #[test]
    fn a_frozen_clock_reads_the_epoch_given() {
        if !Path::new(LIBFAKETIME).exists() {
            assert!(matches!(tool("date").frozen_clock(0), Err(NoFaketime)));
            return;
        }
        let out = tool("date")
            .arg("+%s")
            .frozen_clock(1_735_689_600)
            .unwrap()
            .run()
            .unwrap();
        assert_eq!(out.stdout_text().trim(), "1735689600");
    }

    #[test]
    fn a_missing_program_points_at_the_package_list() {
        let err = tool("cairn-no-such-tool").run().unwrap_err();
        assert!(matches!(err, ToolError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("dev/image-packages.txt"), "{err}");
    }
}
