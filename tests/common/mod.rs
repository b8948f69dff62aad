//! Shared harness: the mock provider and the gateway as child processes on ephemeral loopback
//! ports, a temp dir with the config and the usage file, and helpers to read usage records.
#![allow(dead_code)]

pub mod clickhouse;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Polls `check` until it answers `Ok`, and returns that value; past `limit` the test fails
/// with the last `Err` it gave (what was seen instead). The one place tests wait on a
/// condition: the polls start at 5 ms and back off to 100 ms.
pub async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        match check().await {
            Ok(v) => return v,
            Err(e) => assert!(start.elapsed() < limit, "not within {limit:?}: {e}"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A port free now and not handed out before in this process: the kernel may give a just
/// released port again, and two picks for one gateway (data and ops plane) must differ.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status();
}

pub struct Mock {
    pub port: u16,
    pub proc: Proc,
}

impl Mock {
    pub fn start(args: &[&str]) -> Mock {
        Self::start_on(free_port(), args)
    }

    /// A mock on a given port (to replace one that was stopped: a provider that recovers).
    pub fn start_on(port: u16, args: &[&str]) -> Mock {
        let child = Command::new(env!("CARGO_BIN_EXE_mock-openai"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mock");
        wait_tcp(port);
        Mock {
            port,
            proc: Proc(child),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
}

pub fn wait_tcp(port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "port {port} never opened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub const PROVIDER_KEY: &str = "sk-provider-secret-4f1c9a";

/// A config for the gateway in front of `mock_url`; `extra` is appended verbatim.
pub fn config_text(port: u16, ops: u16, mock_url: &str, usage: &Path, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
ops_listen = "127.0.0.1:{ops}"
threads = 2
max_body_bytes = 8388608
drain_timeout_ms = 10000

[usage]
sink = "jsonl"
path = "{usage}"
flush_interval_ms = 20

[reload]
poll_interval_ms = 100

[providers.mock]
kind = "openai_compatible"
base_url = "{mock_url}"
api_key = "${{MB_TEST_PROVIDER_KEY}}"
first_byte_timeout_ms = 2000
idle_timeout_ms = 1000

[providers.dead]
kind = "openai_compatible"
base_url = "http://127.0.0.1:1/v1"
connect_timeout_ms = 500

[models."gpt-4o-mini"]
provider = "mock"
model = "mock-1"
price = {{ input_per_1m = 0.15, cached_input_per_1m = "0.075", output_per_1m = 0.60 }}

[models."same-name"]
provider = "mock"

[models."text-embedding-3-small"]
provider = "mock"
model = "mock-embed"

[models."dead-model"]
provider = "dead"

[passthrough]
provider = "mock"
{extra}
"#,
        usage = usage.display()
    )
}

pub struct Gateway {
    pub port: u16,
    pub ops: u16,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub usage: PathBuf,
    pub log: PathBuf,
    pub proc: Proc,
    pub mock: Mock,
}

impl Gateway {
    pub fn start() -> Gateway {
        Self::start_with(&[], "")
    }

    fn spawn(config: &Path, log: &Path) -> Child {
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_model-bridge"))
            .args(["serve", "--config"])
            .arg(config)
            .env("MB_TEST_PROVIDER_KEY", PROVIDER_KEY)
            .env("RUST_LOG", "info")
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("start gateway")
    }

    /// Kills the gateway without warning (a crash) and starts it again on the same config.
    pub fn crash_and_restart(&mut self) {
        let _ = self.proc.0.kill();
        let _ = self.proc.0.wait();
        self.proc = Proc(Self::spawn(&self.config, &self.log));
        self.wait_ready();
    }

    pub fn start_with(mock_args: &[&str], extra: &str) -> Gateway {
        Self::start_edited(mock_args, extra, |t| t)
    }

    /// Like `start_with`, with the whole config text passed through `edit` first.
    pub fn start_edited(
        mock_args: &[&str],
        extra: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Gateway {
        let mock = Mock::start(mock_args);
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let ops = free_port();
        let usage = dir.path().join("usage.jsonl");
        let config = dir.path().join("gateway.toml");
        let text = edit(config_text(port, ops, &mock.url(), &usage, extra));
        std::fs::write(&config, text).unwrap();
        let log = dir.path().join("gateway.log");
        let child = Self::spawn(&config, &log);
        let g = Gateway {
            port,
            ops,
            dir,
            config,
            usage,
            log,
            proc: Proc(child),
            mock,
        };
        g.wait_ready();
        g
    }

    /// Stops the gateway with SIGTERM (drain, flush) and waits for it to exit.
    pub fn stop(&mut self) {
        signal(&self.proc.0, "TERM");
        self.wait_exit(Duration::from_secs(30));
    }

    /// Waits for the gateway process to exit (blocking on it, no polling); past `limit` it is
    /// killed and the test fails.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let pid = self.proc.0.id() as libc::pid_t;
        let child = &mut self.proc.0;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(move || {
                let _ = tx.send(child.wait());
            });
            match rx.recv_timeout(limit) {
                Ok(status) => status.expect("waiting for the gateway"),
                Err(_) => {
                    // SAFETY: a plain signal to our own child; the waiting thread then returns.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    panic!("gateway did not exit within {limit:?}");
                }
            }
        })
    }

    /// Waits until the metric `sample` reads `want`; fails loudly after `limit`.
    pub async fn wait_metric(&self, sample: &str, want: f64, limit: Duration) {
        eventually(limit, || async {
            let got = self.metric(sample).await;
            if got == want {
                Ok(())
            } else {
                Err(format!(
                    "{sample} is {got}, not {want}: {}",
                    self.log_text()
                ))
            }
        })
        .await
    }

    /// Waits until the metric `sample` reads at least `want`.
    pub async fn wait_metric_at_least(&self, sample: &str, want: f64, limit: Duration) {
        eventually(limit, || async {
            let got = self.metric(sample).await;
            if got >= want {
                Ok(())
            } else {
                Err(format!("{sample} is {got}, below {want}"))
            }
        })
        .await
    }

    /// Starts the gateway again on its config (after `stop`).
    pub fn restart(&mut self) {
        self.proc = Proc(Self::spawn(&self.config, &self.log));
        self.wait_ready();
    }

    /// Runs the `model-bridge` CLI on this gateway's config: (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_model-bridge"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("MB_TEST_PROVIDER_KEY", PROVIDER_KEY)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    /// The value of one unlabelled-or-labelled sample in `/metrics` (0 when absent).
    pub async fn metric(&self, sample: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.ops)) {
                let _ =
                    s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
                let mut buf = String::new();
                let _ = std::io::Read::read_to_string(&mut s, &mut buf);
                if buf.starts_with("HTTP/1.1 200") {
                    wait_tcp(self.port);
                    return;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "gateway not ready: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn ops_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ops)
    }

    /// An admin API request as `key`: its status and JSON body (null when none).
    pub async fn admin(
        &self,
        key: &str,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = client().request(m, self.ops_url(path)).bearer_auth(key);
        if !body.is_null() {
            req = req.json(&body);
        }
        let r = req.send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// All usage records written so far.
    pub fn records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.usage)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for the record of `request_id`.
    pub fn record(&self, request_id: &str) -> serde_json::Value {
        let start = Instant::now();
        loop {
            if let Some(r) = self
                .records()
                .into_iter()
                .find(|r| r["request_id"] == request_id)
            {
                return r;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no usage record for {request_id}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `model-bridge keys create …` against this gateway's config (the CLI, while it runs);
    /// returns (the key, its id). The printed record never carries the hash.
    pub fn create_key(&self, args: &[&str]) -> (String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_model-bridge"))
            .args(["keys", "create", "--config"])
            .arg(&self.config)
            .args(args)
            .env("MB_TEST_PROVIDER_KEY", PROVIDER_KEY)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v.get("hash").is_none(), "the hash is never shown");
        (
            v["key"].as_str().unwrap().to_string(),
            v["id"].as_str().unwrap().to_string(),
        )
    }

    /// Waits until the gateway accepts `key`: keys created by the CLI reach it when it next polls
    /// its key store.
    pub async fn wait_key(&self, key: &str) {
        let start = Instant::now();
        loop {
            let r = client()
                .get(self.ops_url("/admin/v1/whoami"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            if r.status() == 200 {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "gateway never saw the new key"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The ops plane's Prometheus text.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.ops_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A small chat completion request for `model`.
pub fn chat(model: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hello there"}]})
}

impl Gateway {
    /// Sends `n` chat completions one after another, streamed and not in turn; each must answer
    /// 200 and is read to its end. Returns their request ids.
    pub async fn chats(&self, c: &reqwest::Client, n: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let r = c
                .post(self.url("/v1/chat/completions"))
                .json(&chat("gpt-4o-mini", i % 2 == 0))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            ids.push(header(&r, "x-request-id").to_string());
            assert!(!r.bytes().await.unwrap().is_empty());
        }
        ids
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

pub fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .expect("h2c client")
}

pub fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// (prompt, completion, cached) the mock reported.
pub fn mock_usage(r: &reqwest::Response) -> (u64, u64, u64) {
    let v: Vec<u64> = header(r, "x-mock-usage")
        .split(',')
        .map(|x| x.parse().unwrap())
        .collect();
    (v[0], v[1], v[2])
}

pub fn fnv1a(bytes: &[u8]) -> String {
    format!("{:016x}", model_bridge::mock::fnv1a(bytes))
}

/// JSON lines of `path`, re-read until `done` holds for them (at most 10 s).
pub fn wait_lines(
    path: &Path,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let start = Instant::now();
    loop {
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if done(&lines) || start.elapsed() > Duration::from_secs(10) {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A policy directory under `dir` with the shipped roles and `extra` policy text.
pub fn policies_dir(dir: &Path, extra: &str) -> PathBuf {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/policies/roles.toml"),
        policies.join("roles.toml"),
    )
    .unwrap();
    std::fs::write(policies.join("test.toml"), extra).unwrap();
    policies
}

/// A redis-server of one test, on an ephemeral loopback port, without persistence; it can be
/// killed and started again (empty, as after a crash without persistence).
pub struct PrivateRedis {
    pub port: u16,
    proc: Option<Proc>,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let mut r = PrivateRedis {
            port: free_port(),
            proc: None,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/redis.sh install)");
        self.proc = Some(Proc(child));
        wait_tcp(self.port);
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.proc = None;
    }
}

/// Opens a slow chat stream on a raw connection (with `key`, if any), reads three content
/// chunks and hangs up: a client leaving mid-stream. Returns the request id.
pub fn abandon_stream(g: &Gateway, key: Option<&str>) -> String {
    use std::io::Read;
    let body = serde_json::to_vec(&serde_json::json!({"model": "gpt-4o-mini", "stream": true,
        "messages": [{"role": "user", "content": "hello there"}]}))
    .unwrap();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = key.map_or(String::new(), |k| format!("authorization: Bearer {k}\r\n"));
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n{auth}x-mock-chunks: 200\r\nx-mock-chunk-interval-ms: 20\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&got)
        .matches("\"content\":\"tok")
        .count()
        < 3
    {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got)
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap()
        .trim()
        .to_string()
}

/// A PostgreSQL server of one test (scripts/postgres.sh with its own port and data dir): it
/// can be killed (immediate shutdown) and started again on the same data.
pub struct PrivatePostgres {
    pub port: u16,
    /// The connection URL the script printed.
    pub url: String,
    dir: tempfile::TempDir,
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let mut p = PrivatePostgres {
            port: free_port(),
            url: String::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        p.url = p.script("start");
        p
    }

    fn script(&self, action: &str) -> String {
        let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres.sh"))
            .arg(action)
            .env("MB_PG_PORT", self.port.to_string())
            .env("MB_PG_DIR", self.dir.path())
            .output()
            .expect("scripts/postgres.sh");
        assert!(
            out.status.success(),
            "postgres.sh {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn restart(&self) {
        self.script("start");
    }

    /// Immediate shutdown: connections drop as in a crash.
    pub fn kill(&self) {
        self.script("stop");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.script("stop");
    }
}
