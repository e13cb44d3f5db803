//! Hostile inputs shared by the tests of every component that reads them, and ways to see
//! what one cost: time (the fastest of three runs) and the process's peak memory.

/// A "billion laughs" Compose file under 1 KiB: nine anchors, each a list of ten aliases of the
/// one before, so expanding `a9` would make 10^9 nodes.
pub fn yaml_alias_bomb() -> String {
    let mut doc = String::from("services:\n  web:\n    image: busybox\nx-a0: &a0 [lol]\n");
    for i in 1..=9 {
        let items = vec![format!("*a{}", i - 1); 10].join(",");
        doc.push_str(&format!("x-a{i}: &a{i} [{items}]\n"));
    }
    assert!(doc.len() < 1024, "the bomb grew to {} bytes", doc.len());
    doc
}

/// Run `run` three times; the fastest time (so a busy test machine's scheduling does not count
/// as the work) and every result, for the caller to check.
pub fn fastest_of_three<T>(mut run: impl FnMut() -> T) -> (std::time::Duration, Vec<T>) {
    let mut fastest = std::time::Duration::MAX;
    let results = (0..3)
        .map(|_| {
            let started = std::time::Instant::now();
            let result = run();
            fastest = fastest.min(started.elapsed());
            result
        })
        .collect();
    (fastest, results)
}

/// The process's peak resident memory so far (`VmHWM` of /proc/self/status), in bytes.
///
/// # Panics
/// When /proc/self/status has no readable `VmHWM` line (not Linux).
pub fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .expect("a VmHWM line in /proc/self/status")
}
