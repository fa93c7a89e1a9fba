//! How a `TokenSource` proves who the service is: the credential sent with each IssueToken,
//! read at each fetch so a rotated token file is used as soon as it changes.

use std::path::PathBuf;

use crate::error::ClientError;

/// How the service proves who it is to the authority, beyond its connection. Its `Debug`
/// never shows the secret.
#[derive(Clone)]
pub enum Credentials {
    /// Nothing beyond the channel: mTLS (the channel's TLS identity), or an open authority.
    Channel,
    /// A JWT read from this file at every fetch (a Kubernetes projected service-account
    /// token, a SPIRE JWT-SVID), sent as `authorization: Bearer`.
    BearerFile(PathBuf),
    /// A client id and secret from the authority's policy, sent as HTTP Basic.
    ClientSecret {
        /// The `[[client]]` id.
        id: String,
        /// Its secret.
        secret: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Channel => f.write_str("Channel"),
            Credentials::BearerFile(path) => f.debug_tuple("BearerFile").field(path).finish(),
            Credentials::ClientSecret { id, .. } => f
                .debug_struct("ClientSecret")
                .field("id", id)
                .field("secret", &"<redacted>")
                .finish(),
        }
    }
}

impl Credentials {
    /// The `authorization` value to send now, if any. The file is read afresh each time:
    /// the kubelet swaps a projected token in place (a new directory behind the `..data`
    /// symlink, renamed atomically), so each open sees one whole token, old or new.
    pub(crate) async fn authorization(&self) -> Result<Option<String>, ClientError> {
        Ok(match self {
            Credentials::Channel => None,
            Credentials::BearerFile(path) => {
                let token = tokio_read(path).await?;
                Some(format!("Bearer {}", token.trim()))
            }
            Credentials::ClientSecret { id, secret } => Some(format!(
                "Basic {}",
                standard_base64(format!("{id}:{secret}"))
            )),
        })
    }
}

async fn tokio_read(path: &std::path::Path) -> Result<String, ClientError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        std::fs::read_to_string(&path).map_err(|source| ClientError::TokenFile {
            path: path.display().to_string(),
            source,
        })
    })
    .await
    .map_err(|_| ClientError::NoToken)?
}

/// Standard base64 with padding, as HTTP Basic wants (base64url differs on `+/`).
fn standard_base64(text: String) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}
