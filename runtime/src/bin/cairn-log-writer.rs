//! The log writer alone, for the runtime's tests (which have no agent binary):
//! `cairn-log-writer write-log <spec>`, the same arguments as `cairn-agent write-log`, which a
//! device runs instead. See `cairn_runtime::container::write_log`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [command, spec] if command == "write-log" => {
            match cairn_runtime::container::write_log(spec) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cairn-log-writer: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {
            eprintln!("usage: cairn-log-writer write-log <max_bytes>,<keep>,<path> (run by containerd's shim)");
            ExitCode::from(2)
        }
    }
}
