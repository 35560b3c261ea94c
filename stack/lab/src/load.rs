//! Load the tests and benchmarks put on a lab from its namespace: packet
//! loss each way (nftables), extra client source addresses, and many held
//! kernel connections (`kernel_conns --hold`, one process per source: a
//! process may hold about 20,000 files here, so 100,000 connections take
//! several processes and addresses).

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};

use crate::{Lab, LabError, LabResult, run};

impl Lab {
    /// nftables rules in the namespace dropping `per_mille` ‰ of the
    /// packets each way (`numgen random mod 1000 < N`; 5 is half a
    /// percent). Replaces the rules of an earlier call; 0 removes them.
    pub fn set_loss_per_mille(&self, per_mille: u32) -> LabResult<()> {
        let ns = self.netns.as_str();
        // Deleting a table that does not exist fails: ignore it.
        let _ = run(&[
            "ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "hsloss",
        ]);
        if per_mille == 0 {
            return Ok(());
        }
        let rules = format!(
            "table inet hsloss {{\n chain out {{ type filter hook output priority 0; numgen random mod 1000 < {per_mille} counter drop; }}\n chain inp {{ type filter hook input priority 0; numgen random mod 1000 < {per_mille} counter drop; }}\n}}\n"
        );
        let os = |e| LabError::Os {
            context: "nft -f - (is nftables installed? ci/setup installs it)".into(),
            source: e,
        };
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .map_err(os)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(rules.as_bytes()).map_err(os)?;
        }
        if !child.wait().map_err(os)?.success() {
            return Err(LabError::Lab(format!("nft refused the loss rules in {ns}")));
        }
        Ok(())
    }

    /// Adds `n` more IPv4 addresses to the peer end (`.10`, `.11`, ... of
    /// the lab's /24) and widens the namespace's ephemeral port range to
    /// 1024-65535, so each address can open about 64,000 connections to
    /// one server port. Returns the addresses.
    pub fn add_client_sources(&self, n: usize) -> LabResult<Vec<IpAddr>> {
        let IpAddr::V4(peer) = self.cfg.peer4.addr else {
            return Err(LabError::Lab("the lab's peer has no IPv4 address".into()));
        };
        let [a, b, c, _] = peer.octets();
        let ns = self.netns.as_str();
        let mut out = Vec::new();
        for i in 0..n {
            let host = u8::try_from(10 + i)
                .map_err(|_| LabError::Lab(format!("{n} source addresses do not fit")))?;
            let addr = IpAddr::V4(Ipv4Addr::new(a, b, c, host));
            let with_prefix = format!("{addr}/{}", self.cfg.peer4.prefix);
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "replace",
                &with_prefix,
                "dev",
                &self.peer_if,
            ])?;
            out.push(addr);
        }
        run(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_local_port_range=1024 65535",
        ])?;
        Ok(out)
    }
}

/// One `kernel_conns --hold` process in a lab's namespace: it opens its
/// connections from one source address, echoes `--bytes` on each and
/// checks them, prints a JSON report ([`HeldConns::report`]) and holds
/// them open until [`HeldConns::close`] (or drop, which kills it).
#[derive(Debug)]
pub struct HeldConns {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl HeldConns {
    /// Starts `kernel_conns` (the binary at `program`) opening `conns`
    /// connections from `source` to `target`, with `extra` arguments
    /// (e.g. `--bytes 64 --concurrency 250`).
    pub fn start(
        lab: &Lab,
        program: &Path,
        target: SocketAddr,
        source: IpAddr,
        conns: usize,
        extra: &[&str],
    ) -> LabResult<Self> {
        let program = program
            .to_str()
            .ok_or_else(|| LabError::Lab(format!("{} is not UTF-8", program.display())))?;
        let mut child = lab
            .command(program)
            .args(["--target", &target.to_string()])
            .args(["--sources", &source.to_string(), "--hold"])
            .args(["--conns", &conns.to_string()])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| LabError::Os {
                context: format!("starting {program}"),
                source: e,
            })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| LabError::Lab("kernel_conns has no stdout".into()))?;
        Ok(Self {
            stdin: child.stdin.take(),
            stdout: BufReader::new(stdout),
            child,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its next JSON line: the open report first (`connected`,
    /// `verified`, `failed`, `open_secs`, `first_error`), the close
    /// report after [`HeldConns::close`].
    pub fn report(&mut self) -> LabResult<serde_json::Value> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).map_err(|e| LabError::Os {
            context: "reading kernel_conns' report".into(),
            source: e,
        })?;
        serde_json::from_str(&line)
            .map_err(|e| LabError::Lab(format!("kernel_conns said {line:?}: {e}")))
    }

    /// Closes its connections; returns the close report (`closed`,
    /// `close_secs`).
    pub fn close(&mut self) -> LabResult<serde_json::Value> {
        let mut stdin = self
            .stdin
            .take()
            .ok_or_else(|| LabError::Lab("kernel_conns closed twice".into()))?;
        writeln!(stdin, "close").map_err(|e| LabError::Os {
            context: "telling kernel_conns to close".into(),
            source: e,
        })?;
        self.report()
    }
}

impl Drop for HeldConns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
