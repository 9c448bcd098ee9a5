//! Reaching a coordinator: the helpers shared by the agent and the CLI.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::proto::coordinator_client::CoordinatorClient;

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

/// Builds the endpoint for `url` without connecting. Accepts `host:port` as a
/// shorthand for `http://host:port`.
pub fn endpoint(url: &str) -> Result<Endpoint, ConnectError> {
    let full = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let err = |detail: String| ConnectError {
        url: url.to_string(),
        detail,
    };
    let ep = Endpoint::from_shared(full).map_err(|e| err(format!("invalid URL: {e}")))?;
    Ok(ep
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10)))
}

/// Connects to the coordinator at `url` now, failing fast when it is not there.
pub async fn connect(url: &str) -> Result<CoordinatorClient<Channel>, ConnectError> {
    let channel = endpoint(url)?.connect().await.map_err(|e| ConnectError {
        url: url.to_string(),
        detail: source_chain(&e),
    })?;
    Ok(CoordinatorClient::new(channel))
}

/// A client that connects on first use and reconnects by itself after the
/// coordinator went away: what a long-running agent wants.
pub fn connect_lazy(url: &str) -> Result<CoordinatorClient<Channel>, ConnectError> {
    Ok(CoordinatorClient::new(endpoint(url)?.connect_lazy()))
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
