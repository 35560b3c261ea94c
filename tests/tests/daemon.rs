//! The hoststack daemon: `hoststack run --config FILE` on a veth lab, apps
//! attached over its app sockets, and the CLI (`show`, `namespace`, `cert`,
//! `pcap`) talking to it over the control socket, in text and JSON. Also
//! covered: bad input and bad config give the documented errors, a pcap of
//! an echo exchange decodes in tshark, and SIGTERM leaves no XDP program
//! and no socket file behind. Needs root, except for the config test.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use hoststack_app::App;
use hoststack_app_proto::options::AppOptions;
use hoststack_tests::{
    Daemon, Lab, LabConfig, Proc, example_bin, hoststack_bin, last_json, peer, require_root,
    unique_lab_name,
};
use serde_json::Value;

/// One HTTP GET against the metrics port: (status line, body).
fn http_get(addr: SocketAddr, path: &str) -> Result<(String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").context("no header end")?;
    Ok((
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    ))
}

/// The text line whose columns start with `first` (a row of a table).
fn row<'a>(text: &'a str, first: &str) -> Option<Vec<&'a str>> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&first))
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// The `[[namespace]]` table of a namespace "blue" bound to the lab's
/// interface.
fn blue_namespace(lab: &Lab) -> String {
    format!(
        "[[namespace]]\nid = \"blue\"\nsecret = 42\ninterface = \"{}\"\n",
        lab.host_if
    )
}

/// Options of an app in namespace `ns` that leaves its sizes to the daemon.
fn app_options(ns: &str, secret: u64) -> AppOptions {
    AppOptions {
        namespace_id: ns.into(),
        namespace_secret: secret,
        use_eventfd: true,
        rx_fifo_size: 0,
        tx_fifo_size: 0,
        ..AppOptions::default()
    }
}

#[test]
fn every_show_command_reports_the_apps_sessions_and_counters_in_text_and_json() -> Result<()> {
    let d = Daemon::start("sh", |lab| {
        format!(
            "[session]\nworker_mode = \"interrupt\"\nrx_fifo_size = \"128K\"\ntx_fifo_size = \"256K\"\n\n{}",
            blue_namespace(lab)
        )
    })?;
    let host_if = d.lab.host_if.clone();
    let mut peer_cmd = d.lab.peer(&["echo-server", "9007"]);
    peer_cmd.stderr(std::process::Stdio::null());
    let mut kernel_echo = Proc::spawn("kernel echo server", peer_cmd)?;
    kernel_echo.wait_for_line("{\"listening\"", Duration::from_secs(10))?;
    let _echo = d.echo_server()?;
    // An app of namespace "blue" (sizes from the daemon's config): it
    // listens and connects out to the kernel echo server.
    let mut blue = App::attach(d.path("app-blue.sock"), "blue-app", app_options("blue", 42))?;
    let mut bw = blue.worker().context("first worker")?;
    bw.listen("0.0.0.0:8000".parse()?)?;
    let peer = SocketAddr::new(d.lab.cfg.peer4.addr, 9007);
    let out_session = bw.connect(peer)?;
    let held = d.kernel_connection(7)?;
    let held_port = held.local_addr()?.port();

    // show app: one line per app, VPP's columns.
    let t = d.show("app")?;
    assert_eq!(
        t.lines()
            .next()
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["Index", "Name", "Namespace", "Pid", "Uid", "Gid"]),
        "{t}"
    );
    let echo_row = t
        .lines()
        .find(|l| l.contains("echo-server"))
        .context(t.clone())?;
    let echo_idx: u32 = echo_row.split_whitespace().next().unwrap().parse()?;
    assert_eq!(echo_row.split_whitespace().nth(2), Some("default"), "{t}");
    let blue_row = row(&t, &blue.index().to_string()).context(t.clone())?;
    assert_eq!(blue_row[1..3], ["blue-app", "blue"], "{t}");
    let j = d.show_json("app")?;
    let apps = j.as_array().context("array")?;
    assert_eq!(apps.len(), 2, "{j}");
    assert!(
        apps.iter()
            .all(|a| !a["api_client"].is_null() && a["builtin"] == false),
        "{j}"
    );

    // show app INDEX: sizes (the daemon's defaults for blue), workers,
    // listeners (bound to the interface's address), connects.
    let t = d.show(&format!("app {}", blue.index()))?;
    assert!(t.contains("app-name blue-app"), "{t}");
    assert!(t.contains("rx-fifo-size 128K tx-fifo-size 256K"), "{t}");
    assert!(t.contains("[T] 10.77.0.1:8000 workers [0] global"), "{t}");
    assert!(t.contains(&format!("->{peer} READY")), "{t}");
    let j = d.show_json(&format!("app {}", blue.index()))?;
    assert_eq!(j["rx_fifo_size"], 128 << 10, "{j}");
    assert_eq!(j["tx_fifo_size"], 256 << 10, "{j}");
    assert_eq!(j["namespace"], "blue");
    assert_eq!(j["workers"].as_array().map(Vec::len), Some(1), "{j}");
    assert_eq!(j["workers"][0]["connected"], 1, "{j}");
    assert_eq!(j["connects"][0]["remote"], peer.to_string(), "{j}");
    let j = d.show_json(&format!("app {echo_idx}"))?;
    assert_eq!(
        j["rx_fifo_size"],
        512 << 10,
        "an app's own sizes are kept: {j}"
    );
    assert_eq!(j["workers"].as_array().map(Vec::len), Some(2), "{j}");
    let accepted: u64 = j["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["accepted"].as_u64().unwrap())
        .sum();
    assert_eq!(accepted, 1, "{j}");

    // show app server / client / mq.
    let t = d.show("app server")?;
    assert_eq!(
        row(&t, "[T]").map(|r| r[1..].to_vec()),
        Some(vec!["0.0.0.0:7", "echo-server", "0,1"]),
        "{t}"
    );
    assert!(
        t.lines()
            .any(|l| l.starts_with("[T] 10.77.0.1:8000") && l.contains("blue-app")),
        "{t}"
    );
    assert!(d.show("app server verbose")?.contains("API Client"));
    let j = d.show_json(&format!("app {echo_idx} server"))?;
    assert_eq!(j.as_array().map(Vec::len), Some(1), "{j}");
    assert_eq!(j[0]["workers"], serde_json::json!([0, 1]), "{j}");
    let t = d.show("app client")?;
    let local = out_session.local().to_string();
    assert!(
        t.lines()
            .any(|l| l.starts_with(&format!("[T] {local}->{peer}")) && l.contains("blue-app")),
        "{t}"
    );
    assert_eq!(d.show_json("app client")?.as_array().map(Vec::len), Some(1));
    let t = d.show(&format!("app {echo_idx} mq"))?;
    for label in ["[A{i}][0]", "[A{i}][1]", "[A{i}][R0]", "[A{i}][R1]"] {
        let label = label.replace("{i}", &echo_idx.to_string());
        assert!(t.contains(&label), "{label} missing: {t}");
    }
    assert!(t.contains("rx queue, main thread"), "{t}");
    // The rx queues report their fill (both rings) like the event queues.
    assert!(
        t.lines()
            .filter(|l| l.contains("rx queue"))
            .all(|l| l.contains(" used, eventfd")),
        "{t}"
    );
    let j = d.show_json("app mq")?;
    // echo-server: 2 event queues + 2 rx queues (worker, main thread);
    // blue-app: 1 + 2.
    assert_eq!(j.as_array().map(Vec::len), Some(7), "{j}");

    // show session: the held kernel connection and the outbound session.
    let t = d.show("session")?;
    assert!(t.starts_with("Thread 0: 2 active sessions"), "{t}");
    let held_line = t
        .lines()
        .find(|l| {
            l.contains(&format!(
                "10.77.0.1:7->{}:{held_port}",
                d.lab.cfg.peer4.addr
            ))
        })
        .context(t.clone())?;
    let cols: Vec<&str> = held_line.split_whitespace().collect();
    assert_eq!(cols[2..], ["READY", "0", "0", "echo-server"], "{t}");
    let j = d.show_json("session")?;
    let sessions = j[0]["sessions"].as_array().context("sessions")?;
    let s = sessions
        .iter()
        .find(|s| s["remote"] == format!("{}:{held_port}", d.lab.cfg.peer4.addr))
        .context(j.to_string())?;
    assert_eq!(
        (s["state"].as_str(), s["local"].as_str()),
        (Some("READY"), Some("10.77.0.1:7"))
    );
    assert_eq!(s["app"], echo_idx);
    let t = d.show("session verbose")?;
    assert!(t.contains("accepted") && t.contains("connected"), "{t}");

    // show interface / worker / namespace.
    let t = d.show("interface")?;
    let r = row(&t, &host_if).context(t.clone())?;
    assert_eq!(r[1..4], ["0", &d.lab_mac()?, "1500"], "{t}");
    assert!(t.contains("drops: kernel 0 malformed 0"), "{t}");
    let j = d.show_json("interface")?;
    assert!(j[0]["rx_frames"].as_u64().unwrap() >= 6, "{j}");
    assert!(j[0]["tx_frames"].as_u64().unwrap() >= 4, "{j}");
    let t = d.show("worker")?;
    let r = row(&t, "0").context(t.clone())?;
    assert_eq!(r[1..5], [host_if.as_str(), "0", r[3], "interrupt"], "{t}");
    let j = d.show_json("worker")?;
    assert_eq!(j[0]["mode"], "interrupt");
    assert_eq!(j[0]["app_queues"], 2, "{j}");
    assert!(
        j[0]["loops"].as_u64().unwrap() > 0 && j[0]["app_messages"].as_u64().unwrap() >= 1,
        "{j}"
    );
    let t = d.show("namespace")?;
    let r = row(&t, "1").context(t.clone())?;
    let blue_sock = d.path("app-blue.sock").display().to_string();
    assert_eq!(
        r[1..],
        [
            "blue",
            "yes",
            host_if.as_str(),
            "0",
            "1",
            blue_sock.as_str()
        ],
        "{t}"
    );
    let j = d.show_json("namespace")?;
    assert_eq!(j[0]["id"], "default");
    assert_eq!(j[0]["apps"], 1);
    assert_eq!(j[1]["interface"], host_if.as_str());
    let t = d.show("app certificate")?;
    assert_eq!(t, "DEFAULT (cert:0, key:0)\n");
    assert_eq!(d.show_json("app certificate")?[0]["default"], true);

    // Prometheus text on the metrics port.
    let addr = d.metrics.context("no metrics address in the ready line")?;
    let (status, body) = http_get(addr, "/metrics")?;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        body.contains(&format!(
            "hoststack_interface_rx_frames_total{{interface=\"{host_if}\",queue=\"0\"}}"
        )),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "hoststack_app_accepted_total{{app=\"{echo_idx}\",name=\"echo-server\""
        )),
        "{body}"
    );
    assert!(body.contains("hoststack_apps 2\n"), "{body}");
    assert!(
        body.contains("hoststack_worker_sleeps_total{worker=\"0\"}"),
        "{body}"
    );
    assert_eq!(http_get(addr, "/")?.0, "HTTP/1.1 404 Not Found");
    drop((held, out_session, bw, blue));
    Ok(())
}

#[test]
fn bad_show_input_namespace_and_cert_commands_answer_as_documented() -> Result<()> {
    let d = Daemon::start("ns", |_| String::new())?;
    // Bad input: the documented one-line errors, exit code 1, no stdout.
    let (code, err) = d.fails(&["show", "app", "99"])?;
    assert_eq!(
        (code, err.as_str()),
        (1, "hoststack: No app with index 99\n")
    );
    let (code, err) = d.fails(&["show", "app", "bogus"])?;
    assert_eq!(
        (code, err.as_str()),
        (1, "hoststack: unknown input 'bogus'\n")
    );
    assert!(
        d.fails(&["show", "app", "7", "mq"])?
            .1
            .contains("No app with index 7")
    );
    assert!(
        d.fails(&["show", "app", "1", "2"])?
            .1
            .contains("unknown input '2'")
    );
    assert!(
        d.fails(&["show", "sessions"])?
            .1
            .contains("unknown input 'sessions'")
    );
    assert!(
        d.fails(&["show", "app", "99", "--json"])?
            .1
            .contains("No app with index 99")
    );
    let out = Command::new(hoststack_bin())
        .args(["show", "app", "--control"])
        .arg(d.path("nothing.sock"))
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the hoststack daemon"));
    assert!(
        d.fails(&["pcap", "stop", "-i", &d.lab.host_if])?
            .1
            .contains("no capture is running")
    );
    assert!(
        d.fails(&["pcap", "start", "-i", "nosuch0", "-f", "/tmp/x.pcap"])?
            .1
            .contains("no interface nosuch0")
    );

    // Certificates: add, see, delete; the default pair stays.
    std::fs::write(d.path("cert.pem"), vec![b'c'; 1200])?;
    std::fs::write(d.path("key.pem"), vec![b'k'; 240])?;
    let out = d.cli(&[
        "cert",
        "add",
        "--cert",
        &d.path("cert.pem").display().to_string(),
        "--key",
        &d.path("key.pem").display().to_string(),
    ])?;
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout)?.starts_with("cert/key pair 1 added"));
    assert_eq!(
        d.show("app certificate")?,
        "DEFAULT (cert:0, key:0)\n1 (cert:1200, key:240)\n"
    );
    let j = d.show_json("app certificate")?;
    assert_eq!(
        (
            j[1]["index"].as_u64(),
            j[1]["cert_len"].as_u64(),
            j[1]["key_len"].as_u64()
        ),
        (Some(1), Some(1200), Some(240))
    );
    assert!(d.cli(&["cert", "del", "--index", "1"])?.status.success());
    assert_eq!(d.show("app certificate")?, "DEFAULT (cert:0, key:0)\n");
    assert!(
        d.fails(&["cert", "del", "--index", "0"])?
            .1
            .contains("cannot be deleted")
    );
    assert!(
        d.fails(&["cert", "del", "--index", "5"])?
            .1
            .contains("no cert/key pair 5")
    );

    // Namespaces: add one (its app socket appears), attach to it, refuse
    // its deletion while used, delete it (its socket goes).
    let green = d.path("app-green.sock");
    let out = d.cli(&["namespace", "add", "--id", "green", "--secret", "5"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(green.exists());
    let t = d.show("namespace")?;
    let green_s = green.display().to_string();
    assert_eq!(
        row(&t, "1").map(|r| r[1..].to_vec()),
        Some(vec!["green", "yes", "-", "0", "0", green_s.as_str()]),
        "{t}"
    );
    let e = App::attach(&green, "intruder", app_options("green", 6)).unwrap_err();
    assert!(e.to_string().contains("wrong secret"), "{e}");
    let app = App::attach(&green, "green-app", app_options("green", 5))?;
    assert_eq!(d.show_json("namespace")?[1]["apps"], 1);
    let (_, err) = d.fails(&["namespace", "del", "--id", "green"])?;
    assert!(err.contains("green"), "{err}");
    drop(app);
    assert!(wait_until(Duration::from_secs(5), || d
        .show_json("namespace")
        .is_ok_and(|j| j[1]["apps"] == 0)));
    assert!(
        d.cli(&["namespace", "del", "--id", "green"])?
            .status
            .success()
    );
    assert!(!green.exists(), "the namespace's app socket is left");
    assert_eq!(d.show_json("namespace")?.as_array().map(Vec::len), Some(1));
    assert!(
        d.fails(&["namespace", "del", "--id", "default"])?
            .1
            .contains("cannot be deleted")
    );
    assert!(
        d.fails(&["namespace", "add", "--id", "x", "--interface", "eth77"])?
            .1
            .contains("no interface eth77 in this daemon")
    );
    let out = d.cli(&[
        "namespace",
        "add",
        "--id",
        "red",
        "--interface",
        &d.lab.host_if,
        "--json",
    ])?;
    let j: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(j["id"], "red");
    assert_eq!(
        d.show_json("namespace")?[1]["interface"],
        d.lab.host_if.as_str()
    );
    Ok(())
}

/// Runs `hoststack run` on a config and returns (exit code, stderr).
fn run_config(name: &str, text: &str) -> Result<(i32, String)> {
    let dir = std::env::temp_dir().join(format!("hs-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    let out = Command::new(hoststack_bin())
        .arg("run")
        .arg("--config")
        .arg(&path)
        .output()?;
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let err = err.replace(&format!("{}/", dir.display()), "");
    Ok((out.status.code().unwrap_or(-1), err))
}

#[test]
fn a_bad_config_is_refused_naming_the_key_the_line_and_the_expected_form() -> Result<()> {
    let head = "[[interface]]\nname = \"nosuch0\"\naddresses = [\"10.9.0.1/24\"]\n";
    let (code, err) = run_config(
        "a.toml",
        &format!("{head}\n[session]\nworker_mod = \"poll\"\n"),
    )?;
    assert_eq!(code, 2);
    assert!(
        err.starts_with(
            "hoststack: a.toml:6:1: session.worker_mod: unknown field `worker_mod`, expected one of"
        ),
        "{err}"
    );
    assert!(err.contains("6 | worker_mod = \"poll\""), "{err}");
    let (code, err) = run_config(
        "b.toml",
        &format!("{head}[session]\nworker_mode = \"fast\"\n"),
    )?;
    assert_eq!(code, 2);
    assert!(
        err.starts_with("hoststack: b.toml:5:15: session.worker_mode: unknown worker mode 'fast' (expected poll, interrupt or adaptive)"),
        "{err}"
    );
    let (_, err) = run_config(
        "c.toml",
        "[[interface]]\nname = \"x0\"\nqueues = \"two\"\naddresses = [\"10.9.0.1/24\"]\n",
    )?;
    assert!(
        err.contains(
            "c.toml:3:10: interface[0].queues: invalid type: string \"two\", expected u32"
        ),
        "{err}"
    );
    let (_, err) = run_config(
        "d.toml",
        &format!("{head}[session]\nprivate_rx_queues = \"no\"\n"),
    )?;
    assert!(
        err.contains("d.toml:5:21: session.private_rx_queues: invalid type: string \"no\", expected a boolean"),
        "{err}"
    );
    let (_, err) = run_config(
        "e.toml",
        "[[interface]]\nname = \"x0\"\naddresses = [\"10.9.0.1\"]\n",
    )?;
    assert!(
        err.contains("e.toml:3:13: interface[0].addresses: '10.9.0.1' is not ADDRESS/PREFIX"),
        "{err}"
    );
    assert!(err.contains("3 | addresses = [\"10.9.0.1\"]"), "{err}");
    let (_, err) = run_config("f.toml", "[daemon]\nlog = \"info\"\n")?;
    assert!(
        err.contains("f.toml: interface: no [[interface]] table"),
        "{err}"
    );
    Ok(())
}

/// `tshark -r FILE` fields of the TCP frames: (src, dst, sport, dport,
/// syn, ack, payload length).
fn tshark_tcp(file: &Path) -> Result<Vec<Vec<String>>> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args(["-Y", "tcp", "-T", "fields"])
        .args([
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "tcp.srcport",
            "-e",
            "tcp.dstport",
        ])
        .args([
            "-e",
            "tcp.flags.syn",
            "-e",
            "tcp.flags.ack",
            "-e",
            "tcp.len",
        ])
        .output()
        .context("running tshark (ci/setup installs it)")?;
    ensure!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect())
}

#[test]
fn a_pcap_of_an_echo_exchange_shows_the_tcp_handshake_in_tshark() -> Result<()> {
    // Also: the interface's MTU comes from the config.
    let d = Daemon::start("pc", |_| "mtu = 1400\n".into())?;
    assert_eq!(d.show_json("interface")?[0]["mtu"], 1400);
    let _echo = d.echo_server()?;
    let file = d.path("echo.pcap");
    let out = d.cli(&[
        "pcap",
        "start",
        "--interface",
        &d.lab.host_if,
        "--file",
        &file.display().to_string(),
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(d.show("interface")?.contains("(capturing)"));
    let conn = d.kernel_connection(7)?;
    let port = conn.local_addr()?.port().to_string();
    drop(conn);
    std::thread::sleep(Duration::from_millis(300));
    let out = d.cli(&["pcap", "stop", "--interface", &d.lab.host_if, "--json"])?;
    assert!(out.status.success());
    let j: Value = serde_json::from_slice(&out.stdout)?;
    assert!(j["frames"].as_u64().unwrap() >= 8, "{j}");
    let frames = tshark_tcp(&file)?;
    let (host, peer) = (
        d.lab.cfg.host4.addr.to_string(),
        d.lab.cfg.peer4.addr.to_string(),
    );
    let of = |src: &str, sport: &str, syn: &str, ack: &str| {
        frames.iter().position(|f| {
            f.len() == 7 && f[0] == src && f[2] == sport && f[4] == syn && f[5] == ack
        })
    };
    let syn = of(&peer, &port, "1", "0").context(format!("no SYN: {frames:?}"))?;
    let syn_ack = of(&host, "7", "1", "1").context(format!("no SYN-ACK: {frames:?}"))?;
    let ack = frames
        .iter()
        .position(|f| f[0] == peer && f[2] == port && f[4] == "0" && f[5] == "1")
        .context(format!("no ACK: {frames:?}"))?;
    assert!(
        syn < syn_ack && syn_ack < ack,
        "handshake out of order: {frames:?}"
    );
    let data = |src: &str| frames.iter().any(|f| f[0] == src && f[6] == "5");
    assert!(
        data(&peer) && data(&host),
        "the 5-byte exchange is missing: {frames:?}"
    );
    Ok(())
}

#[test]
fn sigterm_detaches_apps_and_leaves_no_xdp_program_or_socket_file_and_a_second_daemon_is_refused()
-> Result<()> {
    let mut d = Daemon::start("st", blue_namespace)?;
    let host_if = d.lab.host_if.clone();
    let link = || -> Result<String> {
        let out = Command::new("ip")
            .args(["link", "show", "dev", &host_if])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert!(
        link()?.contains("xdp"),
        "no XDP program while running: {}",
        link()?
    );
    let echo = d.echo_server()?;
    let mut held = d.kernel_connection(7)?;

    // A second daemon on the same interface, then on the same control socket.
    let other = d.path("other");
    std::fs::create_dir_all(&other)?;
    let cfg = other.join("a.toml");
    std::fs::write(
        &cfg,
        format!(
            "[daemon]\nruntime_dir = \"{}\"\n[[interface]]\nname = \"{host_if}\"\naddresses = [\"10.9.0.1/24\"]\n",
            other.display()
        ),
    )?;
    let out = Command::new(hoststack_bin())
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains(&format!(
            "interface {host_if} is already served by another hoststack daemon (pid "
        )),
        "{err}"
    );
    std::fs::write(
        &cfg,
        format!(
            "[daemon]\ncontrol_socket = \"{}\"\n[[interface]]\nname = \"nosuch0\"\naddresses = [\"10.9.0.1/24\"]\n",
            d.control.display()
        ),
    )?;
    let out = Command::new(hoststack_bin())
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "control socket {} is in use by another hoststack daemon",
            d.control.display()
        )),
        "{err}"
    );
    assert!(
        d.show("app")?.contains("echo-server"),
        "the first daemon was disturbed"
    );

    let sockets = ["control.sock", "app.sock", "app-blue.sock"].map(|s| d.path(s));
    assert!(sockets.iter().all(|s| s.exists()));
    assert!(d.terminate()?, "the daemon did not exit cleanly on SIGTERM");
    // The kernel peer of the app's session sees it reset.
    let mut buf = [0u8; 8];
    let r = held.read(&mut buf);
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "the held connection is still open: {r:?}"
    );
    // The external app sees the stack go and exits by itself.
    let (ok, _) = echo.wait(Duration::from_secs(5))?;
    assert!(
        !ok,
        "the echo server should report that the stack went away"
    );
    let l = link()?;
    assert!(
        !l.contains("xdp"),
        "an XDP program is left on {host_if}: {l}"
    );
    for s in &sockets {
        assert!(!s.exists(), "{} is left behind", s.display());
    }
    let lock = format!("/run/hoststack/locks/host--{host_if}.lock");
    assert!(!Path::new(&lock).exists(), "{lock} is left behind");
    Ok(())
}

/// One daemon on two veth labs (two interfaces, two subnets): an app's
/// listener answers kernel clients on both, outgoing connects leave through
/// the interface on the remote's subnet, and `show` and `pcap` know both.
/// Then the second interface moves to table 1: an app namespace with that
/// table gets it to itself, with its own listener on the same port.
#[test]
fn a_daemon_on_two_interfaces_serves_both_and_connects_out_through_the_right_one() -> Result<()> {
    require_root();
    // Declared first, dropped last: after the daemon.
    let second = Lab::up(LabConfig::new(&unique_lab_name("t2")).with_subnet(5))?;
    let table = format!(
        "[[interface]]\nname = \"{}\"\naddresses = [\"{}\", \"{}\"]\n",
        second.host_if, second.cfg.host4, second.cfg.host6
    );
    let d = Daemon::start("t1", |_| table.clone())?;
    let ifs = d.show_json("interface")?;
    let names: Vec<&str> = ifs
        .as_array()
        .context("interface list")?
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(names, [d.lab.host_if.as_str(), second.host_if.as_str()]);
    let _echo = d.echo_server()?;
    // Kernel clients on both interfaces reach the one listener.
    for lab in [&d.lab, &second] {
        stream_through(lab, 4 << 20)?;
    }
    // Outgoing connects to kernel servers behind each interface.
    for lab in [&second, &d.lab] {
        connect_out(&d.path("app.sock"), lab)?;
    }
    // A capture on the second interface only.
    let file = d.path("second.pcap");
    let file_arg = file.display().to_string();
    let started = [
        "pcap",
        "start",
        "--interface",
        &second.host_if,
        "--file",
        &file_arg,
    ];
    assert!(d.cli(&started)?.status.success());
    let ifs = d.show_json("interface")?;
    assert_eq!(ifs[0]["capturing"], false, "{ifs}");
    assert_eq!(ifs[1]["capturing"], true, "{ifs}");
    assert!(
        d.cli(&["pcap", "stop", "--interface", &second.host_if])?
            .status
            .success()
    );
    Ok(())
}

#[test]
fn an_interface_in_table_1_belongs_to_the_namespaces_of_table_1() -> Result<()> {
    require_root();
    let second = Lab::up(LabConfig::new(&unique_lab_name("v2")).with_subnet(6))?;
    let extra = format!(
        "[[interface]]\nname = \"{}\"\naddresses = [\"{}\"]\ntable = 1\n\n[[namespace]]\nid = \"red\"\nsecret = 0\ntable = 1\n",
        second.host_if, second.cfg.host4
    );
    let d = Daemon::start("v1", |_| extra.clone())?;
    let _default_app = d.echo_server()?;
    // The same port in the other table is not taken.
    let _red_app = d.echo_app(
        "app-red.sock",
        &["--listen", "0.0.0.0:7", "--name", "red-echo"],
    )?;
    stream_through(&second, 1 << 20)?;
    stream_through(&d.lab, 1 << 20)?;
    stream_through(&second, 1 << 20)?;
    // Each app saw the connections of its own table's interface only.
    let accepted = |name: &str| -> Result<u64> {
        let apps = d.show_json("app")?;
        let index = apps
            .as_array()
            .context("app list")?
            .iter()
            .find(|a| a["name"] == name)
            .and_then(|a| a["index"].as_u64())
            .context(format!("no app {name}: {apps}"))?;
        let detail = d.show_json(&format!("app {index}"))?;
        Ok(detail["workers"]
            .as_array()
            .context("workers")?
            .iter()
            .filter_map(|w| w["accepted"].as_u64())
            .sum())
    };
    assert_eq!(accepted("red-echo")?, 2);
    assert_eq!(accepted("echo-server")?, 1);
    // The red app connects out through its interface.
    connect_out(&d.path("app-red.sock"), &second)?;
    let ifs = d.show_json("interface")?;
    assert_eq!(ifs[1]["table"], 1, "{ifs}");
    Ok(())
}

/// 'bytes' of random data from `lab`'s kernel side through hoststack's
/// echo on port 7, checked.
fn stream_through(lab: &Lab, bytes: u64) -> Result<()> {
    let host = lab.cfg.host4.addr.to_string();
    let v = peer(lab, &["stream", &host, "7", &bytes.to_string()])?;
    ensure!(v["ok"] == true, "{}: {v}", lab.host_if);
    Ok(())
}

/// The throughput client example on `socket` connecting to a kernel echo
/// server in `lab`'s namespace, 2 MiB checked.
fn connect_out(socket: &Path, lab: &Lab) -> Result<()> {
    let mut kernel = Proc::spawn("kernel echo server", lab.peer(&["echo-server", "9007"]))?;
    kernel.wait_for_line("{\"listening\"", Duration::from_secs(10))?;
    let mut cmd = Command::new(example_bin("throughput_client"));
    cmd.arg("--socket").arg(socket).args([
        "--connect",
        &format!("{}:9007", lab.cfg.peer4.addr),
        "--bytes",
        &(2u64 << 20).to_string(),
    ]);
    let (ok, out) = Proc::spawn("external client", cmd)?.wait(Duration::from_secs(60))?;
    let v = last_json(&out)?;
    ensure!(ok && v["verified"] == 2 << 20, "via {}: {v}", lab.host_if);
    Ok(())
}

#[test]
fn a_daemon_on_a_tap_serves_an_external_echo_app_and_shows_its_offloads_counting() -> Result<()> {
    let mut cfg = LabConfig::new(&unique_lab_name("dt"));
    cfg.tap = true;
    let d = Daemon::start_on(cfg, |lab| {
        format!("driver = \"uring-tap\"\nnetns = \"{}\"\n", lab.netns)
    })?;
    let _echo = d.echo_server()?;
    stream_through(&d.lab, 16 << 20)?;
    let host6 = d.lab.cfg.host6.addr.to_string();
    let v = peer(&d.lab, &["stream", &host6, "7", &(4u64 << 20).to_string()])?;
    assert_eq!(v["ok"], true, "{v}");
    connect_out(&d.path("app.sock"), &d.lab)?;
    let j = d.show_json("interface")?;
    let o = &j[0]["offload"];
    // USO comes with Linux 6.2; checksums and TSO with any.
    let on = o["on"].as_str().unwrap_or_default();
    assert!(on.starts_with("csum tso4 tso6"), "{j}");
    for key in ["rx_gso_frames", "tx_gso_frames", "rx_csum_partial"] {
        assert!(o[key].as_u64().unwrap_or(0) > 0, "{key}: {j}");
    }
    let t = d.show("interface")?;
    assert!(
        t.contains(&format!("offloads: {on}; super-frames rx")),
        "{t}"
    );
    Ok(())
}

/// The ids `id -u NAME` or `id -g NAME` prints.
fn id_of(flag: &str, name: &str) -> Result<u32> {
    let out = Command::new("id").args([flag, name]).output()?;
    ensure!(out.status.success(), "id {flag} {name} failed");
    Ok(String::from_utf8(out.stdout)?.trim().parse()?)
}

#[test]
fn app_sockets_take_mode_owner_and_group_from_the_config_and_show_app_names_each_apps_process()
-> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let d = Daemon::start("pm", |_| {
        "[session]\napp_socket_mode = \"0660\"\napp_socket_owner = \"nobody\"\napp_socket_group = \"daemon\"\n\n[[namespace]]\nid = \"blue\"\nsecret = 42\napp_socket_mode = 0o606\napp_socket_owner = 4321\napp_socket_group = 4322\n".into()
    })?;
    let meta = std::fs::metadata(d.path("app.sock"))?;
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(
        (meta.uid(), meta.gid()),
        (id_of("-u", "nobody")?, id_of("-g", "daemon")?)
    );
    let meta = std::fs::metadata(d.path("app-blue.sock"))?;
    assert_eq!(meta.permissions().mode() & 0o777, 0o606);
    assert_eq!((meta.uid(), meta.gid()), (4321, 4322));

    // This process attaches (as root, which the mode lets in): show app
    // names it by pid, uid and gid, as the kernel vouched at connect.
    let app = App::attach(d.path("app.sock"), "me", app_options("", 0))?;
    let (pid, uid, gid) = (
        std::process::id(),
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    let t = d.show("app")?;
    let me = row(&t, &app.index().to_string()).context(t.clone())?;
    assert_eq!(
        me[1..],
        [
            "me",
            "default",
            &pid.to_string(),
            &uid.to_string(),
            &gid.to_string()
        ],
        "{t}"
    );
    let j = d.show_json("app")?;
    let me = j
        .as_array()
        .and_then(|a| a.iter().find(|a| a["name"] == "me"))
        .context(j.to_string())?;
    assert_eq!(
        (me["pid"].as_u64(), me["uid"].as_u64(), me["gid"].as_u64()),
        (Some(pid.into()), Some(uid.into()), Some(gid.into())),
        "{j}"
    );
    Ok(())
}
