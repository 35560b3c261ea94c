//! Memory from /proc: a process's resident and proportional set, the
//! shared-memory segments it maps, and the kernel's slab and TCP socket
//! memory, for the rows that count what connections cost.

use anyhow::{Context, Result};

/// The value in kB of the line starting with `key` in `text`, in bytes.
fn kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Resident set of process `pid`, bytes (`VmRSS`).
pub fn rss(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    kb_field(&text, "VmRSS:").with_context(|| format!("no VmRSS in {path}"))
}

/// Proportional set of process `pid`, bytes (`Pss` of smaps_rollup):
/// pages shared with other processes (a memfd segment mapped by the stack
/// and its app) count once over all of them.
pub fn pss(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    kb_field(&text, "Pss:").with_context(|| format!("no Pss in {path}"))
}

/// Resident bytes of the memfd mappings (shared-memory segments) of
/// process `pid`.
pub fn memfd_resident(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/smaps");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let (mut total, mut in_memfd) = (0, false);
    for l in text.lines() {
        // A mapping's header: "start-end perms offset dev inode [path]".
        let header = l.split_whitespace().next().is_some_and(|f| {
            f.contains('-') && f.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        });
        if header {
            in_memfd = l.contains("/memfd:");
        } else if in_memfd {
            if let Some(b) = kb_field(l, "Rss:") {
                total += b;
            }
        }
    }
    Ok(total)
}

/// The kernel's slab memory, bytes (`Slab` of /proc/meminfo).
pub fn slab() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    kb_field(&text, "Slab:").context("no Slab in /proc/meminfo")
}

/// Memory of TCP socket buffers, bytes (the `mem` pages of the `TCP:` line
/// of /proc/net/sockstat, which counts the whole machine).
pub fn tcp_socket_memory() -> Result<u64> {
    let text =
        std::fs::read_to_string("/proc/net/sockstat").context("reading /proc/net/sockstat")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .context("no TCP line in /proc/net/sockstat")?;
    let mut w = line.split_whitespace();
    while let Some(k) = w.next() {
        if k == "mem" {
            let pages: u64 = w.next().context("mem without a value")?.parse()?;
            return Ok(pages * 4096);
        }
    }
    anyhow::bail!("no mem in {line:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_in_bytes() {
        assert_eq!(kb_field("Pss:   12 kB\nRss: 3 kB", "Rss:"), Some(3072));
        assert_eq!(kb_field("Pss: x kB", "Pss:"), None);
    }
}
