//! Reaching a coordinator: the helpers shared by the agent and the CLI.
//!
//! A client is a URL plus, optionally, a bearer token and TLS settings
//! ([`ClientOptions`]). Connection problems are reported as one line that says
//! what to fix ([`explain`]): a TLS client talking to a plaintext coordinator
//! is told to use `http://`, an untrusted certificate to pass `--ca-cert`, and
//! so on, rather than showing a raw handshake error.

use std::path::PathBuf;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::proto::coordinator_client::CoordinatorClient;

/// A coordinator client that sends the configured bearer token with every call.
pub type Client = CoordinatorClient<InterceptedService<Channel, Bearer>>;

/// How to reach a coordinator.
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// `http://host:port`, `https://host:port`, or `host:port` (plaintext).
    pub url: String,
    /// Sent as `authorization: Bearer TOKEN`.
    pub token: Option<String>,
    /// Trust this CA (PEM) for the coordinator's certificate, in addition to
    /// the public roots.
    pub ca_cert: Option<PathBuf>,
    /// A client certificate (PEM) for coordinators that require mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// Shows everything but the token's secret.
impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_cert", &self.ca_cert)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .finish()
    }
}

impl From<&str> for ClientOptions {
    fn from(url: &str) -> Self {
        ClientOptions {
            url: url.to_string(),
            ..Default::default()
        }
    }
}

impl From<&String> for ClientOptions {
    fn from(url: &String) -> Self {
        ClientOptions::from(url.as_str())
    }
}

/// The connection flags shared by `benchq` and `benchq-agent` (every one also
/// an environment variable). The coordinator URL itself is each binary's own.
#[derive(Clone, Default, clap::Args)]
pub struct ConnectArgs {
    /// Bearer token for the coordinator (see `benchq-coordinator token add`).
    #[arg(long, env = "BENCHQ_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Trust this CA certificate (PEM) for an https:// coordinator.
    #[arg(long, env = "BENCHQ_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM), for a coordinator that requires mutual TLS.
    #[arg(long, env = "BENCHQ_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The private key of --client-cert (PEM).
    #[arg(long, env = "BENCHQ_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

/// Shows everything but the token's secret.
impl std::fmt::Debug for ConnectArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.options(""), f)
    }
}

impl ConnectArgs {
    /// The options for reaching the coordinator at `url` with these flags.
    pub fn options(&self, url: &str) -> ClientOptions {
        ClientOptions {
            url: url.to_string(),
            token: self.token.clone(),
            ca_cert: self.ca_cert.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        }
    }
}

/// Adds the bearer token, when there is one, to each request.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Why a coordinator could not be reached, worded for the person at the terminal.
#[derive(Debug)]
pub struct ConnectError {
    url: String,
    detail: String,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "coordinator unreachable at {}: {}",
            self.url, self.detail
        )
    }
}

impl std::error::Error for ConnectError {}

/// Builds the endpoint for `opts` without connecting.
pub fn endpoint(opts: impl Into<ClientOptions>) -> Result<Endpoint, ConnectError> {
    let opts = opts.into();
    let url = &opts.url;
    let err = |detail: String| ConnectError {
        url: url.to_string(),
        detail,
    };
    let full = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let tls = full.starts_with("https://");
    if !tls && (opts.ca_cert.is_some() || opts.client_cert.is_some()) {
        return Err(err(
            "--ca-cert and --client-cert need an https:// coordinator URL".to_string(),
        ));
    }
    let mut ep = Endpoint::from_shared(full).map_err(|e| err(format!("invalid URL: {e}")))?;
    if tls {
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| err(format!("{flag} {}: {e}", path.display())))
        };
        let mut config = ClientTlsConfig::new().with_webpki_roots();
        if let Some(ca) = &opts.ca_cert {
            config = config.ca_certificate(Certificate::from_pem(read("--ca-cert", ca)?));
        }
        if let (Some(cert), Some(key)) = (&opts.client_cert, &opts.client_key) {
            config = config.identity(Identity::from_pem(
                read("--client-cert", cert)?,
                read("--client-key", key)?,
            ));
        }
        ep = ep.tls_config(config).map_err(|e| {
            let chain = source_chain(&e);
            err(match &opts.client_cert {
                // Nothing was contacted yet: the local files are the problem.
                Some(cert) => format!(
                    "--client-cert {} / --client-key cannot be used (they must be a PEM X.509 v3 \
                     certificate and its private key): {chain}",
                    cert.display()
                ),
                None => format!("--ca-cert cannot be used: {chain}"),
            })
        })?;
    }
    Ok(ep
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10)))
}

fn bearer(opts: &ClientOptions) -> Result<Bearer, ConnectError> {
    match &opts.token {
        None => Ok(Bearer(None)),
        Some(t) => format!("Bearer {}", t.trim())
            .parse()
            .map(|v| Bearer(Some(v)))
            .map_err(|_| ConnectError {
                url: opts.url.clone(),
                detail: "--token holds characters a header cannot carry".to_string(),
            }),
    }
}

/// Connects to the coordinator now, failing fast when it is not there.
pub async fn connect(opts: impl Into<ClientOptions>) -> Result<Client, ConnectError> {
    let opts = opts.into();
    let auth = bearer(&opts)?;
    let channel = endpoint(opts.clone())?
        .connect()
        .await
        .map_err(|e| ConnectError {
            url: opts.url.clone(),
            detail: explain(&e),
        })?;
    Ok(client(channel, auth))
}

/// A client that connects on first use and reconnects by itself after the
/// coordinator went away: what a long-running agent wants.
pub fn connect_lazy(opts: impl Into<ClientOptions>) -> Result<Client, ConnectError> {
    let opts = opts.into();
    let auth = bearer(&opts)?;
    Ok(client(endpoint(opts)?.connect_lazy(), auth))
}

/// The largest reply a client accepts: a status of a 100,000-job batch fits.
const MAX_REPLY: usize = 256 * 1024 * 1024;

fn client(channel: Channel, auth: Bearer) -> Client {
    CoordinatorClient::with_interceptor(channel, auth).max_decoding_message_size(MAX_REPLY)
}

/// An error and its causes on one line: `a: b: c`.
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// What went wrong reaching the coordinator, with what to do about it when
/// the cause is a TLS or transport mismatch a person can fix.
pub fn explain(e: &dyn std::error::Error) -> String {
    let chain = source_chain(e);
    match hint(&chain) {
        Some(h) => format!("{h} ({chain})"),
        None => chain,
    }
}

/// [`explain`] for a status an RPC to `url` returned: the message, with a
/// hint when the status came from the connection rather than the coordinator.
pub fn explain_status(url: &str, s: &tonic::Status) -> String {
    match connection_problem(url, s) {
        Some(h) => format!("{h} ({})", s.message()),
        None => s.message().to_string(),
    }
}

/// What to fix, when a status shows that the connection itself is set up
/// wrong (TLS against plaintext, an untrusted or expired certificate, a
/// missing client certificate) rather than that the coordinator is down.
pub fn connection_problem(url: &str, s: &tonic::Status) -> Option<&'static str> {
    let chain = source_chain(s);
    let closed = [
        "broken pipe",
        "operation was canceled",
        "connection closed",
        "reset by peer",
    ]
    .iter()
    .any(|c| chain.contains(c));
    hint(&chain).or_else(|| {
        // The coordinator hung up without a word: during a TLS handshake when
        // it wants a client certificate, or because it speaks only TLS.
        (closed && s.code() != tonic::Code::Ok).then_some(if url.starts_with("https://") {
            "the coordinator closed the connection: it may require a client certificate (pass --client-cert and --client-key) signed by the CA given to its --client-ca"
        } else {
            "the coordinator closed the connection: it may require TLS, use an https:// URL (and --ca-cert for a private CA)"
        })
    })
}

fn hint(chain: &str) -> Option<&'static str> {
    let has = |needle: &str| chain.contains(needle);
    Some(
        if has("InvalidContentType") || has("corrupt message") || has("WrongVersion") {
            "the coordinator does not speak TLS: use an http:// URL, or start it with --tls-cert and --tls-key"
        } else if has("UnknownIssuer") {
            "the coordinator's certificate is not signed by a CA this client trusts: pass --ca-cert with the CA that signed it"
        } else if has("Expired") {
            "the coordinator's certificate has expired (or this machine's clock is wrong): renew it"
        } else if has("NotValidForName") {
            "the coordinator's certificate is not valid for this host name: connect with a name it lists"
        } else if has("CertificateRequired") || (has("HandshakeFailure") && has("alert")) {
            "the coordinator requires a client certificate: pass --client-cert and --client-key"
        } else if has("UnknownCA") || has("BadCertificate") || has("DecryptError") {
            "the coordinator does not accept this client certificate: it must be signed by the CA given to the coordinator's --client-ca"
        } else if has("frame with invalid size")
            || has("invalid HTTP version")
            || has("http2 error") && has("connection error")
        {
            "the coordinator closed the connection: it probably requires TLS, use an https:// URL (and --ca-cert for a private CA)"
        } else {
            return None;
        },
    )
}
