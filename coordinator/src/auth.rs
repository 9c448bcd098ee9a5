//! Who is calling: bearer tokens, roles and tenants.
//!
//! Tokens are configured in a JSON file the coordinator reads at start and on
//! SIGHUP. Each entry has a name, a role and a tenant, and only the SHA-256 of
//! its secret: the file can be read without revealing a credential, and the
//! secret itself is shown once, by `benchq-coordinator token add`.
//!
//! The interceptor runs in front of the `benchq.v1.Coordinator` service only,
//! so health and reflection stay open to load balancers and grpcurl. It turns
//! the `authorization: Bearer …` header into an [`Identity`] in the request's
//! extensions; each RPC then checks the role it needs, and the tenant comes
//! from the identity, never from the request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use tonic::Status;
use tonic::service::Interceptor;

/// What a credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Lease, Heartbeat and Complete, for its tenant's jobs.
    Agent,
    /// Enqueue, read and cancel within its tenant.
    Operator,
    /// Everything, in every tenant.
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "agent" => Ok(Role::Agent),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("unknown role {s:?}: use agent, operator or admin")),
        }
    }
}

/// The caller of an RPC, as established by its credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's name; empty when authentication is disabled.
    pub name: String,
    pub role: Role,
    /// The tenant the credential acts for; ignored for admins.
    pub tenant: String,
}

impl Identity {
    /// The caller when the coordinator runs with `--insecure-no-auth`: may do
    /// anything, and names its tenant in each request.
    pub fn anonymous() -> Self {
        Identity {
            name: String::new(),
            role: Role::Admin,
            tenant: String::new(),
        }
    }

    /// Refuses the call unless the caller has one of `roles` (admins always do).
    pub fn require(&self, rpc: &str, roles: &[Role]) -> Result<(), Status> {
        if self.role == Role::Admin || roles.contains(&self.role) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "role {} may not call {rpc}",
                self.role.name()
            )))
        }
    }

    /// The tenant a request acts in: the credential's, for agents and
    /// operators (a request naming another one is refused); the requested one
    /// (or the default) for admins.
    pub fn tenant_for(&self, field: &str, requested: &str) -> Result<String, Status> {
        if self.role == Role::Admin {
            if requested.is_empty() && !self.name.is_empty() {
                // An admin acts for every tenant, so it must say which one:
                // a job put in a tenant no agent serves would wait forever.
                return Err(Status::invalid_argument(format!(
                    "{field}: an admin credential must name the tenant"
                )));
            }
            return Ok(if requested.is_empty() {
                crate::validate::DEFAULT_TENANT.to_string()
            } else {
                requested.to_string()
            });
        }
        if requested.is_empty() || requested == self.tenant {
            Ok(self.tenant.clone())
        } else {
            Err(Status::permission_denied(format!(
                "{field}: this credential acts for tenant {:?} only",
                self.tenant
            )))
        }
    }

    /// The tenant whose jobs reads and cancels may see: `None` for admins (all).
    pub fn visible_tenant(&self) -> Option<&str> {
        (self.role != Role::Admin).then_some(self.tenant.as_str())
    }
}

/// One entry of the tokens file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenEntry {
    pub name: String,
    pub role: Role,
    pub tenant: String,
    /// Hex SHA-256 of the secret.
    pub sha256: String,
}

/// The tokens file: `{"tokens": [ … ]}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TokensFile {
    pub tokens: Vec<TokenEntry>,
}

impl TokensFile {
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading tokens file {}: {e}", path.display()))?;
        let file: TokensFile = serde_json::from_str(&text)
            .map_err(|e| format!("tokens file {}: {e}", path.display()))?;
        let mut names = std::collections::HashSet::new();
        for t in &file.tokens {
            if t.name.is_empty() || !names.insert(t.name.as_str()) {
                return Err(format!(
                    "tokens file {}: token names must be non-empty and unique ({:?})",
                    path.display(),
                    t.name
                ));
            }
            if t.role != Role::Admin && t.tenant.is_empty() {
                return Err(format!(
                    "tokens file {}: token {:?} needs a tenant",
                    path.display(),
                    t.name
                ));
            }
            if decode_hex(&t.sha256).is_none_or(|h| h.len() != 32) {
                return Err(format!(
                    "tokens file {}: token {:?}: sha256 must be 64 hex characters",
                    path.display(),
                    t.name
                ));
            }
        }
        Ok(file)
    }
}

/// Where identities come from.
pub struct Auth {
    source: Option<PathBuf>,
    by_hash: RwLock<Arc<HashMap<Vec<u8>, Identity>>>,
}

impl Auth {
    /// No authentication: every caller is [`Identity::anonymous`].
    pub fn disabled() -> Self {
        Auth {
            source: None,
            by_hash: RwLock::default(),
        }
    }

    /// Tokens from `path`, read now.
    pub fn from_file(path: impl Into<PathBuf>) -> Result<Self, String> {
        let auth = Auth {
            source: Some(path.into()),
            by_hash: RwLock::default(),
        };
        auth.reload()?;
        Ok(auth)
    }

    pub fn is_enabled(&self) -> bool {
        self.source.is_some()
    }

    /// Reads the tokens file again. On error the tokens in force stay.
    /// Returns how many tokens are now configured.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.source else {
            return Ok(0);
        };
        let file = TokensFile::read(path)?;
        let map: HashMap<Vec<u8>, Identity> = file
            .tokens
            .into_iter()
            .map(|t| {
                let hash = decode_hex(&t.sha256).expect("checked by TokensFile::read");
                (
                    hash,
                    Identity {
                        name: t.name,
                        role: t.role,
                        tenant: t.tenant,
                    },
                )
            })
            .collect();
        let n = map.len();
        *self.by_hash.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
        Ok(n)
    }

    /// The identity behind an `authorization` header value.
    pub fn identify(&self, authorization: Option<&str>) -> Result<Identity, Status> {
        if self.source.is_none() {
            return Ok(Identity::anonymous());
        }
        let header = authorization.ok_or_else(|| {
            Status::unauthenticated("missing credential: send `authorization: Bearer TOKEN`")
        })?;
        let secret = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer TOKEN`"))?
            .trim();
        let hash = sha256(secret.as_bytes());
        let map = self
            .by_hash
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        map.get(hash.as_slice())
            .cloned()
            .ok_or_else(|| Status::unauthenticated("unknown or revoked token"))
    }
}

/// Puts the caller's [`Identity`] into each request's extensions.
#[derive(Clone)]
pub struct AuthInterceptor(pub Arc<Auth>);

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let header = match request.metadata().get("authorization") {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| {
                Status::unauthenticated(
                    "the authorization header is not plain ASCII: check the token",
                )
            })?),
        };
        let identity = self.0.identify(header)?;
        request.extensions_mut().insert(identity);
        Ok(request)
    }
}

/// The caller of `request`, put there by [`AuthInterceptor`].
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Identity, Status> {
    request
        .extensions()
        .get::<Identity>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no credential"))
}

/// A new random secret: `bq_` and 64 hex characters.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system's random source");
    format!("bq_{}", encode_hex(&bytes))
}

/// Hex SHA-256 of `secret`, as stored in the tokens file.
pub fn hash_secret(secret: &str) -> String {
    encode_hex(&sha256(secret.as_bytes()))
}

fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// Adds a token to the file at `path` (created when missing) and returns its
/// secret, which is not stored anywhere.
pub fn add_token(path: &Path, name: &str, role: Role, tenant: &str) -> Result<String, String> {
    let mut file = if path.exists() {
        TokensFile::read(path)?
    } else {
        TokensFile::default()
    };
    if file.tokens.iter().any(|t| t.name == name) {
        return Err(format!(
            "a token named {name:?} already exists in {}",
            path.display()
        ));
    }
    if role != Role::Admin && tenant.is_empty() {
        return Err(format!("--tenant is required for role {}", role.name()));
    }
    let secret = new_secret();
    file.tokens.push(TokenEntry {
        name: name.to_string(),
        role,
        tenant: tenant.to_string(),
        sha256: hash_secret(&secret),
    });
    let text = serde_json::to_string_pretty(&file).expect("serializable") + "\n";
    // Write the new file beside the old one, then rename: a coordinator
    // reloading on SIGHUP never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(secret)
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_by_their_secret_only() {
        let dir = std::env::temp_dir().join(format!("benchq-auth-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.json");
        let secret = add_token(&path, "ci", Role::Operator, "team-a").unwrap();
        assert!(secret.starts_with("bq_") && secret.len() == 67);
        let stored = std::fs::read_to_string(&path).unwrap();
        assert!(!stored.contains(&secret), "only the hash is stored");
        assert!(
            add_token(&path, "ci", Role::Agent, "t").is_err(),
            "names are unique"
        );

        let auth = Auth::from_file(&path).unwrap();
        let who = auth.identify(Some(&format!("Bearer {secret}"))).unwrap();
        assert_eq!(
            (who.name.as_str(), who.role, who.tenant.as_str()),
            ("ci", Role::Operator, "team-a")
        );
        let code = |r: Result<Identity, Status>| r.unwrap_err().code();
        assert_eq!(code(auth.identify(None)), tonic::Code::Unauthenticated);
        assert_eq!(
            code(auth.identify(Some("Bearer bq_nope"))),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            code(auth.identify(Some(&secret))),
            tonic::Code::Unauthenticated
        );

        // Reload picks up new tokens; a broken file keeps the old ones.
        let second = add_token(&path, "agent-1", Role::Agent, "team-a").unwrap();
        assert!(auth.identify(Some(&format!("Bearer {second}"))).is_err());
        assert_eq!(auth.reload(), Ok(2));
        assert!(auth.identify(Some(&format!("Bearer {second}"))).is_ok());
        std::fs::write(&path, "{not json").unwrap();
        assert!(auth.reload().is_err());
        assert!(auth.identify(Some(&format!("Bearer {second}"))).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn roles_and_tenants() {
        let op = Identity {
            name: "op".into(),
            role: Role::Operator,
            tenant: "a".into(),
        };
        assert!(op.require("EnqueueBatch", &[Role::Operator]).is_ok());
        assert_eq!(
            op.require("Lease", &[Role::Agent]).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(op.tenant_for("tenant_id", "").unwrap(), "a");
        assert_eq!(op.tenant_for("tenant_id", "a").unwrap(), "a");
        assert_eq!(
            op.tenant_for("tenant_id", "b").unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        let admin = Identity::anonymous();
        assert_eq!(admin.tenant_for("tenant_id", "b").unwrap(), "b");
        assert_eq!(admin.visible_tenant(), None);
    }
}
