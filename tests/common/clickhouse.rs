//! ClickHouse for tests: the shared server `scripts/test.sh` starts (`MB_CLICKHOUSE_URL`), a
//! private server a test may kill and restart (same script, own ports and data dir), a TCP proxy
//! in front of it that can refuse connections or swallow answers, and a query helper.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The shared server's URL; `None` (test skipped, said loudly) only outside the test script.
pub fn shared_url() -> Option<String> {
    match std::env::var("MB_CLICKHOUSE_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                !matches!(std::env::var("CI").as_deref(), Ok("true" | "1")),
                "MB_CLICKHOUSE_URL must be set in CI"
            );
            eprintln!("SKIPPED: MB_CLICKHOUSE_URL not set (run scripts/test.sh)");
            None
        }
    }
}

pub fn new_db() -> String {
    format!("mb_test_{:08x}", rand::random::<u32>())
}

/// Runs one statement; panics with ClickHouse's message on failure.
pub async fn query(url: &str, sql: &str) -> String {
    try_query(url, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub async fn try_query(url: &str, sql: &str) -> Result<String, String> {
    let r = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
        .post(url)
        .body(sql.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let ok = r.status().is_success();
    let text = r.text().await.map_err(|e| e.to_string())?;
    if ok {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Polls `sql` until its trimmed answer equals `want` (at most `secs`); returns the last answer.
pub async fn wait_for(url: &str, sql: &str, want: &str, secs: u64) -> String {
    let start = Instant::now();
    loop {
        let got = try_query(url, sql).await.unwrap_or_default();
        if got.trim() == want || start.elapsed() > Duration::from_secs(secs) {
            return got.trim().to_string();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A ClickHouse server of this test alone, which it may kill and restart.
pub struct PrivateClickHouse {
    pub http_port: u16,
    pub tcp_port: u16,
    dir: PathBuf,
    /// `name=port,port`: the cluster this node declares (scripts/clickhouse.sh).
    cluster: Option<String>,
    _tmp: tempfile::TempDir,
}

impl PrivateClickHouse {
    pub fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let ch = Self {
            http_port: super::free_port(),
            tcp_port: super::free_port(),
            dir: tmp.path().join("ch"),
            cluster: None,
            _tmp: tmp,
        };
        ch.run("start");
        ch
    }

    /// `n` servers declaring one cluster `name` of `n` one-replica shards (no replication).
    pub fn cluster(name: &str, n: usize) -> Vec<Self> {
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| (super::free_port(), super::free_port()))
            .collect();
        let decl = format!(
            "{name}={}",
            ports
                .iter()
                .map(|(_, tcp)| tcp.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        ports
            .into_iter()
            .map(|(http_port, tcp_port)| {
                let tmp = tempfile::tempdir().unwrap();
                let ch = Self {
                    http_port,
                    tcp_port,
                    dir: tmp.path().join("ch"),
                    cluster: Some(decl.clone()),
                    _tmp: tmp,
                };
                ch.run("start");
                ch
            })
            .collect()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn run(&self, what: &str) {
        let out = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/clickhouse.sh"
        ))
        .arg(what)
        .env("MB_CH_HTTP_PORT", self.http_port.to_string())
        .env("MB_CH_TCP_PORT", self.tcp_port.to_string())
        .env("MB_CH_DIR", &self.dir)
        .env("MB_CH_CLUSTER", self.cluster.as_deref().unwrap_or(""))
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "clickhouse {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILL: no flush, no goodbye — what a crash or an OOM kill looks like.
    pub fn kill(&self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("clickhouse.pid")) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
            let pid = pid.trim().to_string();
            let start = Instant::now();
            while std::path::Path::new(&format!("/proc/{pid}")).exists()
                && start.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = std::fs::remove_file(self.dir.join("clickhouse.pid"));
        }
    }

    /// Starts it again on the same data.
    pub fn restart(&self) {
        self.run("start");
    }
}

impl Drop for PrivateClickHouse {
    fn drop(&mut self) {
        self.run("stop");
    }
}

/// What the proxy does with a connection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass = 0,
    /// Accepts and closes at once: ClickHouse "down".
    Refuse = 1,
    /// Forwards the request but never the answer: the insert lands, the client sees a failure.
    SwallowAnswers = 2,
}

/// A TCP proxy in front of ClickHouse whose behaviour a test switches.
pub struct FlakyProxy {
    pub port: u16,
    /// Connections watch it: a switch reaches open ones at once.
    mode: tokio::sync::watch::Sender<Mode>,
}

impl FlakyProxy {
    pub fn start(target_port: u16) -> Self {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = std_listener.local_addr().unwrap().port();
        std_listener.set_nonblocking(true).unwrap();
        let mode = tokio::sync::watch::Sender::new(Mode::Pass);
        let m = mode.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(std_listener).unwrap();
                loop {
                    let Ok((mut client, _)) = l.accept().await else {
                        continue;
                    };
                    if *m.borrow() == Mode::Refuse {
                        drop(client);
                        continue;
                    }
                    let (passing, mut refusing) = (m.subscribe(), m.subscribe());
                    tokio::spawn(async move {
                        let Ok(mut server) =
                            tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                        else {
                            return;
                        };
                        // Requests always go through whole; answers reach the client only
                        // while the mode is Pass. A pooled connection therefore switches with
                        // the mode between two requests, and no request is ever cut halfway.
                        let (mut cr, mut cw) = client.split();
                        let (mut sr, mut sw) = server.split();
                        let answers = async {
                            let mut buf = [0u8; 16 * 1024];
                            loop {
                                let n = match tokio::io::AsyncReadExt::read(&mut sr, &mut buf).await
                                {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                };
                                if *passing.borrow() == Mode::Pass
                                    && tokio::io::AsyncWriteExt::write_all(&mut cw, &buf[..n])
                                        .await
                                        .is_err()
                                {
                                    return;
                                }
                            }
                        };
                        // Refusing also ends the connections already open.
                        let refused = refusing.wait_for(|m| *m == Mode::Refuse);
                        tokio::select! {
                            _ = tokio::io::copy(&mut cr, &mut sw) => {}
                            _ = answers => {}
                            _ = refused => {}
                        }
                    });
                }
            });
        });
        Self { port, mode }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

/// The `[clickhouse]` / sink sections that send usage and audit to `url`, database `db`.
pub fn sink_config(text: String, url: &str, db: &str, extra: &str) -> String {
    let text = text.replacen("sink = \"jsonl\"", "sink = \"clickhouse\"", 1);
    format!(
        "{text}\n[clickhouse]\nurl = \"{url}\"\ndatabase = \"{db}\"\nmigrate_on_start = true\nbatch_interval_ms = 100\ninsert_timeout_ms = 2000\nspool_dir = \"spool\"\nnode = \"test\"\n{extra}\n"
    )
}
